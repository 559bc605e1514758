"""A mark in the broker's Redis database, to tell when the broker lost its data (its messages with it)."""

from __future__ import annotations

import uuid

import redis

from llm_router.tasks.store import JobStore

EPOCH_KEY = "llm-router:broker-epoch"


class BrokerMark:
    """A mark in the broker's Redis database, to tell when it lost its data: a restarted Redis without
    persistence, or a flushed database, loses the mark with the messages. The database keeps the mark that the
    last complete sweep recovered from (or the first sweeper saw): it outlives the broker and is the same for
    every sweeper, so a loss is recovered by whichever sweeper sweeps next, even one started after the loss,
    and a sweep cut short (a lost lock, an error) is done again by the next."""

    def __init__(self, client: redis.Redis, store: JobStore):
        self.redis, self.store = client, store
        where = client.connection_pool.connection_kwargs
        self.name = f"broker-epoch {where.get('host')}:{where.get('port')}/{where.get('db', 0)}"
        store.set_mark(self.name, self.current(), if_absent=True)

    def current(self) -> str:
        self.redis.set(EPOCH_KEY, uuid.uuid4().hex, nx=True)
        mark = self.redis.get(EPOCH_KEY)
        return mark.decode() if isinstance(mark, bytes) else ""

    def lost_since_recovered(self) -> str | None:
        """The broker's mark now, when it lost its data since the last recovery; None when it did not."""
        current = self.current()
        return current if current != self.store.mark(self.name) else None

    def recovered(self, mark: str) -> None:
        """Every waiting job was published again after the loss that ``mark`` followed."""
        self.store.set_mark(self.name, mark)
