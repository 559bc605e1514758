"""Backends by provider name: one small class per provider, built once per worker process."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tasks.errors import ConfigurationError
from workers.backends.base import Backend

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime


def _local(runtime: WorkerRuntime) -> Backend:
    from workers.backends.local import LocalBackend

    return LocalBackend(runtime.registry, runtime.profile.max_batch)


def _echo(runtime: WorkerRuntime) -> Backend:
    from workers.backends.echo import EchoBackend

    return EchoBackend()


def _hf_inference(runtime: WorkerRuntime) -> Backend:
    from workers.backends.hf_inference import HfInferenceBackend

    return HfInferenceBackend(runtime.remote_deps("hf-inference", runtime.settings.hf_base_url))


def _openai(runtime: WorkerRuntime) -> Backend:
    from workers.backends.openai_compat import OpenAIBackend

    return OpenAIBackend(runtime.remote_deps("openai", None))


def _tei(runtime: WorkerRuntime) -> Backend:
    from workers.backends.tei import TeiBackend

    return TeiBackend(runtime.remote_deps("tei", None))


BACKENDS: dict[str, Callable[[WorkerRuntime], Backend]] = {
    "local": _local,
    "hf-inference": _hf_inference,
    "openai": _openai,
    "tei": _tei,
    "echo": _echo,
}


def make_backend(provider: str, runtime: WorkerRuntime) -> Backend:
    try:
        factory = BACKENDS[provider]
    except KeyError:
        raise ConfigurationError(f"provider {provider!r} is unknown; known: {', '.join(BACKENDS)}") from None
    return factory(runtime)
