"""Turn a GGUF checkpoint into a plain Hugging Face folder that loads in seconds.

transformers reads GGUF directly but dequantises on every load (15-20 s, 1.5 GB); converting once and
saving a normal folder makes each later load take about 2 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@contextmanager
def _no_tensor_progress_bar() -> Iterator[None]:
    """transformers draws a progress bar of its own (tqdm, not its logging's) for every tensor it dequantises:
    hundreds of lines in a log. One line per model is said by the caller instead."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    drawn = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, *_, **__: iterable
    try:
        yield
    finally:
        gguf_utils.tqdm = drawn


def convert_gguf(gguf_file: Path, target: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with _no_tensor_progress_bar():
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # A GGUF-loaded model refuses to save while it still claims to be quantised.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.to(dtype)
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)
