"""Backends by provider name: one small class per provider, built once per worker process from a
``BackendContext``."""

from __future__ import annotations

from collections.abc import Callable

from llm_router.tasks.errors import ConfigurationError
from llm_router.workers.backends.base import Backend
from llm_router.workers.backends.context import BackendContext


def _local(context: BackendContext) -> Backend:
    from llm_router.workers.backends.local import LocalBackend

    return LocalBackend(context.registry, context.max_batch)


def _echo(context: BackendContext) -> Backend:
    from llm_router.workers.backends.echo import EchoBackend

    return EchoBackend()


def _hf_inference(context: BackendContext) -> Backend:
    from llm_router.workers.backends.hf_inference import HfInferenceBackend

    return HfInferenceBackend(context.remote("hf-inference", context.settings.hf_base_url))


def _openai(context: BackendContext) -> Backend:
    from llm_router.workers.backends.openai_compat import OpenAIBackend

    return OpenAIBackend(context.remote("openai", None))


def _tei(context: BackendContext) -> Backend:
    from llm_router.workers.backends.tei import TeiBackend

    return TeiBackend(context.remote("tei", None))


BACKENDS: dict[str, Callable[[BackendContext], Backend]] = {
    "local": _local,
    "hf-inference": _hf_inference,
    "openai": _openai,
    "tei": _tei,
    "echo": _echo,
}


def make_backend(provider: str, context: BackendContext) -> Backend:
    try:
        factory = BACKENDS[provider]
    except KeyError:
        raise ConfigurationError(f"provider {provider!r} is unknown; known: {', '.join(BACKENDS)}") from None
    return factory(context)
