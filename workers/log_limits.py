"""Keeping an outage's log readable: while the broker is away (restarting, or refusing writes at its
``maxmemory``), Celery's consumer tries again several times a second and logs each try, with a traceback.
The filter here lets each such message through once a minute; the worker waits on quietly meanwhile."""

from __future__ import annotations

import logging
import time

EVERY_S = 60.0
NOISY = ("celery.worker.consumer.consumer", "celery.worker.consumer.connection", "kombu.connection")


class OncePerInterval(logging.Filter):
    """Lets a message template through once per ``every_s``, whatever its arguments."""

    def __init__(self, every_s: float = EVERY_S):
        super().__init__()
        self.throttle = Throttle(every_s)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or self.throttle.allows(str(record.msg))


class Throttle:
    """Whether a message of a kind may be logged now: once per ``every_s`` a kind."""

    def __init__(self, every_s: float = EVERY_S):
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def allows(self, kind: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(kind, float("-inf")) < self.every_s:
            return False
        self._last[kind] = now
        return True


def quiet_outages() -> None:
    """Install the filter on the loggers that repeat themselves while the broker is away."""
    limit = OncePerInterval()
    for name in NOISY:
        logging.getLogger(name).addFilter(limit)
