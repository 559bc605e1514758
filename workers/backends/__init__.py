"""Backends by provider name. Remote providers join this registry as they are added."""

from __future__ import annotations

from collections.abc import Callable

from tasks.errors import ConfigurationError
from workers.backends.base import Backend
from workers.registry import ModelRegistry


def _local(registry: ModelRegistry) -> Backend:
    from workers.backends.local import LocalBackend

    return LocalBackend(registry)


BACKENDS: dict[str, Callable[[ModelRegistry], Backend]] = {"local": _local}


def make_backend(provider: str, registry: ModelRegistry) -> Backend:
    try:
        factory = BACKENDS[provider]
    except KeyError:
        raise ConfigurationError(
            f"provider {provider!r} is not available in this version; known: {', '.join(BACKENDS)}"
        ) from None
    return factory(registry)
