"""The two fleet brokers under test, seen the same way: how many messages wait on a queue, what they hold, and
emptying a queue. On Redis kombu keeps one list per priority step under a queue's name; on RabbitMQ a queue is
a queue, read with AMQP's own passive declare and basic.get."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import redis
from kombu import Connection

from llm_router.broker.queues import redis_lists as priority_keys


@dataclass(frozen=True)
class Waiting:
    """A message waiting on a queue: its headers and content type, and every byte the broker holds of it."""

    headers: dict[str, Any]
    content_type: str
    raw: bytes


class BrokerQueues:
    """Queues of one broker (``redis://…`` or ``amqp://…``), for tests that look at what waits on them."""

    def __init__(self, url: str):
        self.url = url
        self.is_redis = url.startswith("redis")

    def count(self, queue: str) -> int:
        if self.is_redis:
            with redis.Redis.from_url(self.url) as client:
                return sum(int(client.llen(key)) for key in priority_keys(queue))  # type: ignore[arg-type]
        with Connection(self.url) as connection:
            try:
                return int(connection.default_channel.queue_declare(queue, passive=True).message_count)
            except Exception:  # not declared yet: nothing waits on it
                return 0

    def purge(self, queue: str) -> None:
        if self.is_redis:
            with redis.Redis.from_url(self.url) as client:
                client.delete(*priority_keys(queue))
            return
        with Connection(self.url) as connection, contextlib.suppress(Exception):  # not declared: nothing to purge
            connection.default_channel.queue_purge(queue)

    def take(self, queue: str) -> list[Waiting]:
        """Every message waiting on ``queue``, taken off it, in the order a consumer would meet them."""
        if self.is_redis:
            with redis.Redis.from_url(self.url) as client:
                raws = [raw for key in reversed(priority_keys(queue)) for raw in client.lrange(key, 0, -1)]  # type: ignore[union-attr]
                client.delete(*priority_keys(queue))
            messages = [json.loads(raw) for raw in raws]
            return [Waiting(m["headers"], m["content-type"], raw) for m, raw in zip(messages, raws, strict=True)]
        taken: list[Waiting] = []
        with Connection(self.url) as connection:
            channel = connection.default_channel
            while (message := channel.basic_get(queue, no_ack=True)) is not None:
                headers = dict(message.headers or {})
                body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
                raw = json.dumps(headers, default=str).encode() + body
                taken.append(Waiting(headers, str(message.content_type), raw))
        return taken
