"""Which queues a live worker consumes, so that a job nobody will run says so instead of waiting in silence.

Every worker process that runs jobs renews, every ``RENEW_S``, one Redis key per queue it consumes
(``llm-router:served:<queue>``), which Redis drops ``TTL_S`` after the last renewal: Redis's clock decides,
not a host's. A producer reads the keys of the queues it may send to (one round trip, kept ``CACHE_S``):

- ``tier="auto"`` picks among the tiers some worker serves (the default catalogue's quality tier runs on the
  gpu pool: on a machine with no GPU worker, auto falls back to a served tier);
- a wait that runs out on a queued job says "no worker serves queue X", and so does ``llm-router status``;
- the gateway answers 503 ``no_worker`` at once to a request it would otherwise wait on for nothing.

Without Redis (the embedded mode, RabbitMQ with no ``LLM_ROUTER_REDIS_URL``) nothing is known, and nothing
changes: every queue is taken for served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import cast

import redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

SERVED_PREFIX = "llm-router:served:"
TTL_S = 30
RENEW_S = 10.0
CACHE_S = 5.0


def served_key(queue: str) -> str:
    return SERVED_PREFIX + queue


def renew(client: redis.Redis, queues: Iterable[str], worker: str) -> None:
    """Say, for ``TTL_S``, that ``worker`` consumes ``queues``. Raises ``RedisError``."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.set(served_key(queue), worker, ex=TTL_S)
    pipe.execute()


def unserved_note(queue: str) -> str:
    return f"no worker serves queue {queue}"


class ServedQueues:
    """A producer's view of which queues a live worker consumes, read at most every ``CACHE_S``."""

    def __init__(self, client: redis.Redis | None):
        self.client = client
        self._seen: dict[str, bool] = {}
        self._read_at = float("-inf")

    def served(self, queues: Iterable[str]) -> frozenset[str] | None:
        """Which of ``queues`` some live worker consumes; None when that cannot be known (no Redis, or it
        does not answer)."""
        if self.client is None:
            return None
        wanted = list(queues)
        if time.monotonic() - self._read_at > CACHE_S or any(queue not in self._seen for queue in wanted):
            try:
                found = cast(list[bytes | None], self.client.mget([served_key(queue) for queue in wanted]))
            except RedisError as exc:
                log.debug("could not read which queues are served (%s)", type(exc).__name__)
                return None
            self._seen = {queue: value is not None for queue, value in zip(wanted, found, strict=True)}
            self._read_at = time.monotonic()
        return frozenset(queue for queue in wanted if self._seen.get(queue))

    def is_unserved(self, queue: str) -> bool:
        """Whether it is known that no live worker consumes ``queue``."""
        served = self.served([queue])
        return served is not None and queue not in served
