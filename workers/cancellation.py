"""Stopping a running job its caller cancelled: every worker process listens on the cancel channel (one
pub/sub connection, a thread) and keeps the ids it heard for a while; a generation checks between tokens
whether its job is among them, and the run that ends records ``cancelled`` with what it made and used.

Best effort by design: a worker that was reconnecting when the notice went out finishes the job, which then
ends ``succeeded``. A job still waiting is cancelled in the database and never starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar

import redis
from redis.exceptions import RedisError

from llm_router.broker.notifications import CANCEL_CHANNEL

log = logging.getLogger(__name__)

# Set around a backend call: whether the job being run was asked to stop (checked between tokens).
STOP_REQUESTED: ContextVar[Callable[[], bool] | None] = ContextVar("llm_router_stop_requested", default=None)
# Set around a call of many generations at once: whether each row's job was asked to stop.
ROW_STOPS: ContextVar[list[Callable[[], bool]] | None] = ContextVar("llm_router_row_stops", default=None)
REMEMBER_S = 3600.0
REMEMBER_MAX = 100_000


class CancelWatch:
    """The cancel notices this process heard, for an hour."""

    def __init__(self, url: str | None):
        self._heard: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[list[str]], None]] = []
        if url:
            threading.Thread(target=self._listen, args=(url,), name="llm-router-cancels", daemon=True).start()

    def requested(self, job_id: str) -> bool:
        return job_id in self._heard

    def on_heard(self, listener: Callable[[list[str]], None]) -> None:
        """Also tell ``listener`` the ids of each notice as it is heard (the event loop closes their calls)."""
        self._listeners.append(listener)

    def heard(self, job_ids: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for job_id in job_ids:
                self._heard[job_id] = now
            while self._heard and (
                len(self._heard) > REMEMBER_MAX or next(iter(self._heard.values())) < now - REMEMBER_S
            ):
                self._heard.popitem(last=False)
        for listener in self._listeners:  # after the ids are kept: a closed call's run asks ``requested``
            listener(job_ids)

    def _listen(self, url: str) -> None:
        while True:
            try:
                pubsub = redis.Redis.from_url(url, socket_connect_timeout=5.0).pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CANCEL_CHANNEL)
                for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.heard(message["data"].decode().split())
            except RedisError as exc:
                log.warning("cancel notices unavailable (%s); listening again in 5 s", exc)
                time.sleep(5.0)
