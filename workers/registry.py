"""The per-process model registry: each model is loaded once, on first use or at worker start.

A model id resolves to a folder in this order: the catalogue's ``path``, the prepared models directory
(``<models_dir>/<id>``), then the Hugging Face Hub (or its local cache). Loading errors become
``ModelNotFound`` here, so nothing above this module sees transformers' exceptions.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.catalogue import Catalogue
from tasks.errors import ModelNotFound
from tasks.schemas import Kind
from workers.device import resolve_dtype

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model_id: str
    kind: Kind
    tokenizer: Any
    model: Any
    device: str
    max_length: int
    load_s: float
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelRegistry:
    def __init__(self, catalogue: Catalogue, models_dir: Path, device: str, hf_cache_dir: Path | None = None):
        self._catalogue = catalogue
        self._models_dir = models_dir
        self._device = device
        self._hf_cache_dir = hf_cache_dir
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        return self._device

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def source(self, model_id: str) -> str:
        spec = self._catalogue.model_spec(model_id)
        if spec.path is not None:
            return str(spec.path)
        prepared = self._models_dir / model_id
        if (prepared / "config.json").is_file():
            return str(prepared)
        return model_id

    def get(self, model_id: str, kind: Kind) -> LoadedModel:
        with self._lock:
            found = self._loaded.get(model_id)
            if found is None:
                found = self._load(model_id, kind)
                self._loaded[model_id] = found
        if found.kind != kind:
            raise ModelNotFound(f"model {model_id!r} is loaded for {found.kind}, not {kind}")
        return found

    def _load(self, model_id: str, kind: Kind) -> LoadedModel:
        from transformers import (
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        source = self.source(model_id)
        spec = self._catalogue.model_spec(model_id)
        dtype = resolve_dtype(spec.dtype, self._device)
        model_class = {
            "generate": AutoModelForCausalLM,
            "embed": AutoModel,
            "classify": AutoModelForSequenceClassification,
        }[kind]
        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=self._hf_cache_dir)
            model = model_class.from_pretrained(source, dtype=dtype, cache_dir=self._hf_cache_dir)
        except (OSError, ValueError) as exc:
            hint = (
                "" if source != model_id else " (not prepared locally; run 'llm-router models prepare' or check the id)"
            )
            raise ModelNotFound(f"cannot load model {model_id!r} for {kind}{hint}: {_first_line(exc)}") from exc
        model.to(self._device)
        model.eval()
        if kind == "generate" and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        loaded = LoadedModel(
            model_id=model_id,
            kind=kind,
            tokenizer=tokenizer,
            model=model,
            device=self._device,
            max_length=_max_length(source, tokenizer, model),
            load_s=time.perf_counter() - started,
        )
        log.info("loaded %s (%s) on %s as %s in %.1fs", model_id, kind, self._device, dtype, loaded.load_s)
        return loaded

    def preload(self, model_ids: list[str]) -> list[str]:
        """Load the given models now; returns the errors of those that could not be loaded."""
        problems = []
        for model_id in model_ids:
            spec = self._catalogue.model_spec(model_id)
            if spec.provider != "local" or spec.task is None:
                continue
            try:
                self.get(model_id, spec.task)
            except ModelNotFound as exc:
                problems.append(str(exc))
        return problems


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _max_length(source: str, tokenizer: Any, model: Any) -> int:
    """Longest input the model takes: sentence-transformers' setting when present, else the config's."""
    st_config = Path(source) / "sentence_bert_config.json"
    if st_config.is_file():
        try:
            return int(json.loads(st_config.read_text())["max_seq_length"])
        except (ValueError, KeyError):
            pass
    positions = getattr(model.config, "max_position_embeddings", None) or 512
    declared = getattr(tokenizer, "model_max_length", None) or positions
    return int(min(positions, declared))
