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

KEY_PREFIX = "llm-router:stream:"
MAX_ENTRIES = 10_000
KEEP_S = 3600
BLOCK_MS = 2000
END = b"end"  # the field of the last entry, whose value is the job's final status


def stream_key(job_id: str) -> str:
    return KEY_PREFIX + job_id


def _deltas(entries: Any) -> tuple[list[str], str | None, bytes | None]:
    """The deltas of XREAD's answer, the end status if the stream ended, and the last entry's id."""
    deltas: list[str] = []
    last = None
    for _, items in entries or []:
        for entry_id, fields in items:
            last = entry_id
            if END in fields:
                return deltas, fields[END].decode(), last
            deltas.append(fields[b"text"].decode())
    return deltas, None, last


def read_stream(client: redis.Redis, job_id: str) -> Iterator[str | None]:
    """Deltas as they come; a ``None`` after every idle ``BLOCK_MS`` (the caller looks at the job then).
    Ends after the end entry."""
    after: bytes | str = "0"
    while True:
        entries = cast(Any, client.xread({stream_key(job_id): after}, block=BLOCK_MS, count=256))
        deltas, ended, last = _deltas(entries)
        yield from deltas
        if ended is not None:
            return
        after = last or after
        if not entries:
            yield None


async def read_stream_async(client: aioredis.Redis, job_id: str) -> AsyncIterator[str | None]:
    after: bytes | str = "0"
    while True:
        entries = await client.xread({stream_key(job_id): after}, block=BLOCK_MS, count=256)
        deltas, ended, last = _deltas(entries)
        for delta in deltas:
            yield delta
        if ended is not None:
            return
        after = last or after
        if not entries:
            yield None


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
