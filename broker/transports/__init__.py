"""How job messages travel: one protocol (``base.Transport``) and its implementations."""

from __future__ import annotations

from typing import Any

from llm_router.broker.transports.base import Taken, TaskMessage, Transport
from llm_router.broker.transports.memory import MemoryBroker, MemoryTransport

__all__ = ["MemoryBroker", "MemoryTransport", "Taken", "TaskMessage", "Transport", "direct_redis", "open_transport"]


def direct_redis(app: Any) -> bool:
    """Whether ``app``'s broker is a Redis whose lists are named as ``redis_lists`` names them (no key prefix):
    there this project reads and writes kombu's layout itself."""
    url = app.conf.broker_url or ""
    options = app.conf.broker_transport_options or {}
    return url.startswith(("redis://", "rediss://")) and not options.get("global_keyprefix")


def open_transport(app: Any) -> Transport:
    """A new connection to ``app``'s broker: kombu's Redis layout read and written directly on a Redis, a kombu
    channel on RabbitMQ and the embedded filesystem broker."""
    if direct_redis(app):
        import redis

        from llm_router.broker.transports.redis import RedisTransport

        # A Redis that stops answering fails a take in seconds (the message in hand then runs alone), never hangs it.
        client = redis.Redis.from_url(app.conf.broker_url, socket_timeout=5.0, socket_connect_timeout=5.0)
        return RedisTransport(client, app)
    from llm_router.broker.transports.kombu_channel import KombuTransport

    return KombuTransport(app)
