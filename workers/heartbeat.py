"""The worker's side of ``llm_router.broker.consumers``: a daemon thread that says, every ``RENEW_S``, which queues this
process consumes, for as long as it lives. A Redis that does not answer costs a warning a minute, nothing
more: producers then take every queue for served."""

from __future__ import annotations

import logging
import threading
import time

import redis
from redis.exceptions import RedisError

from llm_router.broker.consumers import RENEW_S, renew

log = logging.getLogger(__name__)
WARN_EVERY_S = 60.0


class ServingHeartbeat:
    def __init__(self, redis_url: str, queues: list[str], worker: str):
        self._client = redis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
        self._queues, self._worker = queues, worker
        self._stop = threading.Event()
        self._warned_at = float("-inf")

    def start(self) -> ServingHeartbeat:
        threading.Thread(target=self._run, name="llm-router-serving", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            try:
                renew(self._client, self._queues, self._worker)
            except RedisError as exc:
                if time.monotonic() - self._warned_at >= WARN_EVERY_S:
                    self._warned_at = time.monotonic()
                    log.warning("could not say which queues this worker serves (%s)", type(exc).__name__)
            if self._stop.wait(RENEW_S):
                return
