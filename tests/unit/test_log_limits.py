"""An outage is said once a minute: a message template passes once per interval, whatever its arguments."""

from __future__ import annotations

import logging

from llm_router.workers.log_limits import OncePerInterval


def _record(message: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("celery.worker.consumer.consumer", level, __file__, 1, message, args, None)


def test_a_template_passes_once_per_interval_and_debug_always() -> None:
    limit = OncePerInterval(every_s=60.0)
    assert limit.filter(_record("Cannot connect to %s: %s", "redis://a", "OOM"))
    assert not limit.filter(_record("Cannot connect to %s: %s", "redis://a", "still OOM"))  # the same, again
    assert limit.filter(_record("Frequent restarts detected: %r", 5))  # another message
    assert limit.filter(_record("Cannot connect to %s: %s", "x", "y", level=logging.DEBUG))  # below warnings
    assert OncePerInterval(every_s=0.0).filter(_record("Cannot connect to %s: %s", "redis://a", "OOM"))
