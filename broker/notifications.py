"""Wake-ups for waiting callers: when a worker is done with a job's message it publishes the job's id on a
Redis pub/sub channel of its own, and ``Job.wait`` (sync and async) sleeps on that channel instead of
polling the database.

A notification says "look again", not "it is final": a waiter subscribes first, then reads the row (so a
job that ends between the two is not missed), and reads it again on every notification. A notification can
still be lost (a worker killed between its commit and its publish, Redis restarting), so a waiter also reads
the row every ``SAFETY_POLL_S`` whatever happens; without Redis (the embedded mode, RabbitMQ with no
``LLM_ROUTER_REDIS_URL``) waits poll as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import redis
import redis.asyncio as aioredis
from redis.client import PubSub
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "llm-router:done:"
CANCEL_CHANNEL = "llm-router:cancel"  # the ids of running jobs whose callers cancelled them
SAFETY_POLL_S = 2.0
REDIS_TIMEOUT_S = 5.0
IDLE_SUBSCRIBERS = 16  # a process's sync waits keep this many subscription connections between waits
WAITS_CLIENT_NAME = "llm-router-waits"  # how the asyncio waits' connection shows in Redis's CLIENT LIST


def channel(job_id: str) -> str:
    return CHANNEL_PREFIX + job_id


class DoneNotices:
    """Publishes and listens for "this job's message was handled" notices (one process's Redis client)."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        self._idle: list[PubSub] = []  # subscription connections between waits
        self._idle_lock = threading.Lock()

    def publish(self, job_ids: list[str]) -> None:
        """One round trip for all of them; never raises (a waiter's safety poll covers a lost notice)."""
        if not job_ids:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.publish(channel(job_id), b"1")
            pipe.execute()
        except RedisError as exc:
            log.warning("could not publish %d job notice(s): %s", len(job_ids), exc)

    def ask_to_stop(self, job_ids: list[str]) -> None:
        """Tell the workers running these jobs to stop them. Raises ``RedisError`` when Redis is down."""
        if job_ids:
            self.client.publish(CANCEL_CHANNEL, " ".join(job_ids))

    @contextlib.contextmanager
    def listening(self, job_id: str) -> Iterator[Callable[[float], bool]]:
        """Subscribed to the job's channel for the block; yields a function that sleeps until a notice comes
        (True) or ``timeout`` seconds pass (False). Raises ``RedisError`` when Redis cannot be reached. The
        subscription's connection is kept for the next wait (a wait that opened its own would cost a connection
        a job)."""
        name = channel(job_id).encode()
        pubsub = self._subscriber()
        try:
            pubsub.subscribe(name)
            # Wait for Redis to confirm: from then on a notice cannot pass us by, and the first sleep is not
            # cut short by the confirmation itself (which would cost the caller a needless read).
            if not _until(pubsub, REDIS_TIMEOUT_S, lambda message: message == ("subscribe", name)):
                raise RedisError(f"no subscription confirmed for {channel(job_id)}")
        except BaseException:
            pubsub.close()
            raise

        def sleep(timeout: float) -> bool:
            return _until(pubsub, timeout, lambda message: message == ("message", name))

        try:
            yield sleep
        finally:
            self._release(pubsub, name)

    def _subscriber(self) -> PubSub:
        with self._idle_lock:
            return self._idle.pop() if self._idle else self.client.pubsub()

    def _release(self, pubsub: PubSub, name: bytes) -> None:
        """Unsubscribed, kept for the next wait (its confirmation is read, and passed over, there)."""
        try:
            pubsub.unsubscribe(name)
        except RedisError:
            pubsub.close()
            return
        with self._idle_lock:
            if len(self._idle) < IDLE_SUBSCRIBERS:
                self._idle.append(pubsub)
                return
        pubsub.close()

    def close(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for pubsub in idle:
            pubsub.close()
        self.client.close()


def _until(pubsub: PubSub, timeout: float, wanted: Callable[[tuple[str, bytes]], bool]) -> bool:
    """Read ``pubsub`` until a message is ``wanted`` (True) or ``timeout`` seconds pass (False); what an
    earlier wait on the connection left (its channel's late notice, its unsubscription) is passed over."""
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        message = pubsub.get_message(timeout=max(deadline - time.monotonic(), 0.0))
        if message is not None and wanted((message["type"], message["channel"])):
            return True
        if time.monotonic() >= deadline:
            return False


class AsyncDoneNotices:
    """The asyncio listener: one pub/sub connection for every waiting job of an event loop, a task that
    reads it and wakes the waiters of each job. No thread and no connection per waiting request."""

    def __init__(self, url: str):
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            client_name=WAITS_CLIENT_NAME,
        )
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self._events: dict[str, set[asyncio.Event]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._lock = asyncio.Lock()

    async def subscribe(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        async with self._lock:
            waiters = self._events.setdefault(job_id, set())
            if not waiters:
                await self._pubsub.subscribe(channel(job_id))
            waiters.add(event)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read())
        return event

    async def unsubscribe(self, job_id: str, event: asyncio.Event) -> None:
        async with self._lock:
            waiters = self._events.get(job_id)
            if waiters is None:
                return
            waiters.discard(event)
            if not waiters:
                del self._events[job_id]
                with contextlib.suppress(RedisError):
                    await self._pubsub.unsubscribe(channel(job_id))

    async def _read(self) -> None:
        """Runs from the first subscription until ``close``: a reader that stopped whenever no job waited could
        miss the subscription that came in just as it stopped."""
        # redis-py can take a cancellation that lands in a read for its own timeout and return no message: the
        # loop also ends on ``_closing``, within a read's second.
        while not self._closing:
            if not self._events:
                await asyncio.sleep(0.05)
                continue
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except RedisError as exc:
                log.warning("job notices unavailable (%s); waits read their rows every %s s", exc, SAFETY_POLL_S)
                self._wake_all()
                await asyncio.sleep(SAFETY_POLL_S)
                continue
            if message is None or message.get("type") != "message":
                continue
            name = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
            for event in self._events.get(name.removeprefix(CHANNEL_PREFIX), ()):
                event.set()

    def _wake_all(self) -> None:
        for waiters in self._events.values():
            for event in waiters:
                event.set()

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await self._reader
        with contextlib.suppress(RedisError):
            await self._pubsub.aclose()
        await self.client.aclose()
