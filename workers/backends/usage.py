"""Token counts for remote responses that carry none: the model's own tokenizer when it is available
locally, else an estimate (about four characters a token) marked ``estimated``."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks.schemas import Usage

log = logging.getLogger(__name__)
CHARS_PER_TOKEN = 4


class TokenCounter:
    def __init__(self, models_dir: Path, hf_cache_dir: Path | None):
        self._models_dir = models_dir
        self._hf_cache_dir = hf_cache_dir

    @lru_cache(maxsize=32)  # noqa: B019 - one counter per process, a handful of models
    def _tokenizer(self, model_id: str) -> Any | None:
        from transformers import AutoTokenizer

        local = self._models_dir / model_id
        source = str(local) if (local / "tokenizer_config.json").is_file() else model_id
        try:
            return AutoTokenizer.from_pretrained(source, cache_dir=self._hf_cache_dir, local_files_only=True)
        except (OSError, ValueError):
            return None

    def count(self, model_id: str, texts: list[str]) -> tuple[int, bool]:
        """Tokens in ``texts`` and whether the figure is an estimate."""
        tokenizer = self._tokenizer(model_id)
        if tokenizer is None:
            return sum(max(1, len(text) // CHARS_PER_TOKEN) for text in texts if text), True
        return sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in texts), False

    def usage(self, model_id: str, prompt: list[str], completion: list[str] | None = None) -> Usage:
        prompt_tokens, estimated_prompt = self.count(model_id, prompt)
        completion_tokens, estimated_completion = self.count(model_id, completion or [])
        return Usage.of(prompt_tokens, completion_tokens, estimated=estimated_prompt or estimated_completion)
