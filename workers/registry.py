"""The per-process model registry: each model is loaded once, on first use or at worker start.

A model id resolves to a folder in this order: the catalogue's ``path``, the prepared models directory
(``<models_dir>/<id>``), then the Hugging Face Hub (or its local cache). Loading errors become
``ModelNotFound`` here, so nothing above this module sees transformers' exceptions.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llm_router.broker.catalogue import Catalogue
from llm_router.tasks.errors import ModelNotFound
from llm_router.tasks.schemas import Kind
from llm_router.workers.device import resolve_dtype

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
    size_bytes: int = 0
    quantized: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "kind": self.kind,
            "device": self.device,
            "load_s": round(self.load_s, 2),
            "size_mb": round(self.size_bytes / 2**20, 1),
            "quantized": self.quantized,
        }


Quantize = Literal["none", "8bit"]


def _size_bytes(model: Any) -> int:
    """Bytes of the weights as they are held (quantised weights count at their packed size)."""
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


# Output projections (back into the residual stream) lose the most accuracy when quantised: keeping them in
# fp32 lifts MiniLM's worst embedding cosine against fp32 from 0.965 to 0.982 for ~12 % more weight memory.
FULL_PRECISION_SUFFIXES = ("output.dense", "o_proj", "down_proj", "out_proj", "dense_4h_to_h")


def quantize_8bit(model: Any) -> Any:
    """Dynamic int8 quantisation of Linear layers with per-channel weight scales (the seed's
    ``quantization: '8bit'``), CPU only; output projections stay fp32."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith(FULL_PRECISION_SUFFIXES)
    }
    with warnings.catch_warnings():
        # torch.ao's eager quantisation is deprecated in favour of torchao, but it is the one that ships with
        # torch, runs on fbgemm without compiled extras, and is what this CPU path needs.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8)


class ModelRegistry:
    def __init__(
        self,
        catalogue: Catalogue,
        models_dir: Path,
        device: str,
        hf_cache_dir: Path | None = None,
        *,
        quantize: Quantize = "none",
        max_memory_bytes: int | None = None,
    ):
        self._catalogue = catalogue
        self._models_dir = models_dir
        self._device = device
        self._hf_cache_dir = hf_cache_dir
        self._quantize = quantize
        self._max_memory_bytes = max_memory_bytes
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self.version = 0  # bumped on every load and unload

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
                self.version += 1
                self._enforce_memory_cap(keep=model_id)
            self._loaded.move_to_end(model_id)
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
        quantized = self._quantize == "8bit" and self._device == "cpu"
        if quantized:
            model = quantize_8bit(model)
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
            size_bytes=_size_bytes(model),
            quantized=quantized,
        )
        log.info(
            "loaded %s (%s) on %s as %s%s in %.1fs, %.0f MB",
            model_id,
            kind,
            self._device,
            dtype,
            " int8" if quantized else "",
            loaded.load_s,
            loaded.size_bytes / 2**20,
        )
        return loaded

    @property
    def loaded_bytes(self) -> int:
        return sum(model.size_bytes for model in self._loaded.values())

    def _enforce_memory_cap(self, keep: str) -> None:
        """Unload least recently used models until the loaded weights fit under the cap (the newest stays)."""
        if self._max_memory_bytes is None:
            return
        while self.loaded_bytes > self._max_memory_bytes and len(self._loaded) > 1:
            victim_id = next(model_id for model_id in self._loaded if model_id != keep)
            victim = self._loaded.pop(victim_id)
            self.version += 1
            log.info("unloaded %s (%.0f MB): over the memory cap", victim_id, victim.size_bytes / 2**20)
            del victim
            gc.collect()
            if self._device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()

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
