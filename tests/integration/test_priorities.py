"""Priorities within the interactive lane, on the machine's Redis and RabbitMQ: jobs of higher priority
submitted after lower ones are taken first by a worker that finds them all waiting."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from tests.conftest import WorkerProcess, local_catalogue

CATALOGUE = local_catalogue("ranked")


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_high_priority_jobs_overtake_queued_low_priority_ones(
    broker: str,
    cluster_settings: Settings,
    redis_url: str,
    rabbit_url: str,
    own_catalogue: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    url = cluster_settings.broker_url if broker == "redis" else rabbit_url
    settings = cluster_settings.model_copy(update={"broker_url": url, "config": own_catalogue})
    priorities = [None] * 12 + [5] * 4 + [9] * 4  # the most urgent submitted last
    with Router(settings) as router:
        jobs = [
            router.embed(f"{broker} sentence {n} waiting its turn", use_cache=False, priority=priority)
            for n, priority in enumerate(priorities)
        ]
        # One process taking one message at a time (no dynamic batching), started once every job waits.
        worker = start_worker(
            "ranked",
            f"ranked-{broker}",
            env={"LLM_ROUTER_CONFIG": str(own_catalogue), "LLM_ROUTER_BROKER_URL": url},
            options=("--max-batch", "1"),
        )
        try:
            for job in jobs:
                job.wait(timeout=120)  # raises unless it succeeded
        finally:
            worker.stop()
        started = sorted(
            (router.store.get(job.id).started_at, priority)  # type: ignore[union-attr]
            for job, priority in zip(jobs, priorities, strict=True)
        )
    order = [priority or 0 for _, priority in started]
    assert order == sorted(order, reverse=True), f"jobs started in priority order {order}"
