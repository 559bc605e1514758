"""A bare Celery app for the reference figure of ``run.py``: a no-op task on the same broker, JSON only,
Celery's defaults otherwise. The task counts itself in Redis, so the benchmark knows when all have run."""

from __future__ import annotations

import os

import redis
from celery import Celery

BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/5")
COUNTER = "bench:bare-celery:done"

app = Celery("bare_celery", broker=BROKER)
app.conf.update(
    task_serializer="json", accept_content=["json"], task_ignore_result=True, worker_hijack_root_logger=False
)
_client: redis.Redis | None = None


@app.task(name="bench.noop")
def noop() -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(BROKER)
    _client.incr(COUNTER)
