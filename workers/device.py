"""Choosing the torch device and dtype for a worker process. Torch is imported only when a choice needs it,
so that a worker of the remote pool never loads it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from llm_router.tasks.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

DeviceChoice = Literal["auto", "cpu", "cuda"]


def resolve_device(choice: DeviceChoice) -> str:
    """``auto`` is cuda when a GPU is visible, else cpu; asking for cuda without one is an error."""
    if choice == "cpu":
        return choice
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("device: cuda was asked for, but torch sees no GPU (use --device cpu)")
    return choice


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """The catalogue's dtype, with ``auto`` meaning fp16 on a GPU and fp32 on a CPU."""
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
