"""Turn a GGUF checkpoint into a plain Hugging Face folder that loads in seconds.

transformers reads GGUF directly but dequantises on every load (15-20 s, 1.5 GB); converting once and
saving a normal folder makes each later load take about 2 s.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def convert_gguf(gguf_file: Path, target: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
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
