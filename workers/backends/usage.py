"""Token counts for remote responses that carry none: the model's own tokenizer when it is available
locally, else an estimate (about four characters a token) marked ``estimated``."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from llm_router.tasks.schemas import Usage

log = logging.getLogger(__name__)
CHARS_PER_TOKEN = 4


class TokenCounter:
    """Counts with the model's ``tokenizer.json`` through the ``tokenizers`` library (what transformers' fast
    tokenizers run, without importing torch: the remote pool never loads it), found in the models folder or
    the Hugging Face cache, never downloaded. Safe to share between threads."""

    def __init__(self, models_dir: Path, hf_cache_dir: Path | None):
        self._models_dir = models_dir
        self._hf_cache_dir = hf_cache_dir
        self._tokenizers: dict[str, Any | None] = {}
        self._lock = threading.Lock()

    def _tokenizer(self, model_id: str) -> Any | None:
        if model_id not in self._tokenizers:
            with self._lock:  # one load per model, and imports never race between threads
                if model_id not in self._tokenizers:
                    self._tokenizers[model_id] = self._load(model_id)
        return self._tokenizers[model_id]

    def _load(self, model_id: str) -> Any | None:
        from huggingface_hub import try_to_load_from_cache
        from tokenizers import Tokenizer

        local = self._models_dir / model_id / "tokenizer.json"
        cached = try_to_load_from_cache(model_id, "tokenizer.json", cache_dir=self._hf_cache_dir)
        path = local if local.is_file() else Path(cached) if isinstance(cached, str) else None
        if path is None:
            return None
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises bare Exceptions for a file it cannot read
            log.warning("token counts of %s are estimated: its tokenizer.json is unreadable (%s)", model_id, exc)
            return None
        tokenizer.no_padding()  # a file may pad every text to a fixed length: count the text's own tokens
        tokenizer.no_truncation()
        return tokenizer

    def count(self, model_id: str, texts: list[str]) -> tuple[int, bool]:
        """Tokens in ``texts`` and whether the figure is an estimate."""
        tokenizer = self._tokenizer(model_id)
        if tokenizer is None:
            return sum(max(1, len(text) // CHARS_PER_TOKEN) for text in texts if text), True
        return sum(len(tokenizer.encode(text, add_special_tokens=False).ids) for text in texts), False

    def usage(self, model_id: str, prompt: list[str], completion: list[str] | None = None) -> Usage:
        prompt_tokens, estimated_prompt = self.count(model_id, prompt)
        completion_tokens, estimated_completion = self.count(model_id, completion or [])
        return Usage.of(prompt_tokens, completion_tokens, estimated=estimated_prompt or estimated_completion)
