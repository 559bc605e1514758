"""Token streams: a generation submitted with ``stream=True`` has its text's deltas appended, as the model
makes them, to a Redis stream of its own (capped, expiring an hour after its last delta), closed by an end
entry once the job's final record is written. ``Job.stream()`` reads it from the start, so a reader that
joins late gets every delta; without Redis, or for a job that did not stream, it yields the whole text once
the job ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from llm_router.tasks.errors import StreamRestarted

KEY_PREFIX = "llm-router:stream:"
MAX_ENTRIES = 10_000
KEEP_S = 3600
BLOCK_MS = 2000
END = b"end"  # the field of the last entry, whose value is the job's final status
RESTART = b"restart"  # an entry before the deltas of a retry whose text differs from what was streamed


def stream_key(job_id: str) -> str:
    return KEY_PREFIX + job_id


class _Reading:
    """One reader's place in a stream: the deltas of each XREAD answer, in order."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.after: bytes | str = "0"
        self.read_any = False
        self.ended: str | None = None

    def deltas(self, entries: Any) -> list[str]:
        """The deltas of an answer; sets ``ended`` at the end entry. A restart after deltas were read voids
        them (``StreamRestarted``); one before any (a reader that came later) is passed over."""
        deltas: list[str] = []
        for _, items in entries or []:
            for entry_id, fields in items:
                self.after = entry_id
                if END in fields:
                    self.ended = fields[END].decode()
                    return deltas
                if RESTART in fields:
                    if self.read_any or deltas:
                        raise StreamRestarted(self.job_id)
                    continue
                deltas.append(fields[b"text"].decode())
        self.read_any = self.read_any or bool(deltas)
        return deltas


def read_stream(client: redis.Redis, job_id: str) -> Iterator[str | None]:
    """Deltas as they come; a ``None`` after every idle ``BLOCK_MS`` (the caller looks at the job then).
    Ends after the end entry."""
    reading = _Reading(job_id)
    while reading.ended is None:
        entries = cast(Any, client.xread({stream_key(job_id): reading.after}, block=BLOCK_MS, count=256))
        yield from reading.deltas(entries)
        if not entries:
            yield None


async def read_stream_async(client: aioredis.Redis, job_id: str) -> AsyncIterator[str | None]:
    reading = _Reading(job_id)
    while reading.ended is None:
        entries = await client.xread({stream_key(job_id): reading.after}, block=BLOCK_MS, count=256)
        for delta in reading.deltas(entries):
            yield delta
        if not entries:
            yield None


def streamed_text(client: redis.Redis, job_id: str) -> str:
    """The text an earlier attempt streamed (since the last restart)."""
    text: list[str] = []
    for _, fields in cast(Any, client.xrange(stream_key(job_id))):
        if RESTART in fields:
            text.clear()
        elif b"text" in fields:
            text.append(fields[b"text"].decode())
    return "".join(text)


def restart_stream(client: redis.Redis, job_id: str) -> None:
    """Mark the deltas so far void, and drop them: a reader that comes later reads the new text only."""
    entry_id = cast(Any, client.xadd(stream_key(job_id), {RESTART.decode(): "1"}, maxlen=MAX_ENTRIES, approximate=True))
    client.xtrim(stream_key(job_id), minid=entry_id, approximate=False)


def append_delta(client: redis.Redis, job_id: str, text: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.xadd(stream_key(job_id), {"text": text}, maxlen=MAX_ENTRIES, approximate=True)
    pipe.expire(stream_key(job_id), KEEP_S)
    pipe.execute()


def end_stream(client: redis.Redis, job_id: str, status: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.xadd(stream_key(job_id), {END.decode(): status}, maxlen=MAX_ENTRIES, approximate=True)
    pipe.expire(stream_key(job_id), KEEP_S)
    pipe.execute()
