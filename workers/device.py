"""Choosing the torch device and dtype for a worker process."""

from __future__ import annotations

from typing import Literal

import torch

from tasks.errors import ConfigurationError

DeviceChoice = Literal["auto", "cpu", "cuda"]


def resolve_device(choice: DeviceChoice) -> str:
    """``auto`` is cuda when a GPU is visible, else cpu; asking for cuda without one is an error."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("device: cuda was asked for, but torch sees no GPU (use --device cpu)")
    return choice


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """The catalogue's dtype, with ``auto`` meaning fp16 on a GPU and fp32 on a CPU."""
    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
