"""Cancellation and deadlines on the real Redis, PostgreSQL and a worker: a waiting job cancelled never runs,
a running generation stops early and records the tokens it made, a cancelled batch keeps its finished
results, a job past its deadline ends expired without running, and waiters learn at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from llm_router.broker.async_client import AsyncRouter
from llm_router.broker.client import Job, Router
from llm_router.broker.notifications import channel
from llm_router.tasks.errors import JobCancelled, JobExpired
from tests.conftest import REPO, WorkerProcess

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
CATALOGUE = f"""
default_tier = "held"
tier_order = ["held", "parked"]
[tiers.held]                    # served by this module's worker, once it starts
generate = ["{SMOL}"]
embed = ["{MINILM}"]
[tiers.parked]                  # served by no worker: its jobs wait
embed = ["{MINILM}"]
[models."{SMOL}"]
provider = "local"
task = "generate"
dtype = "bfloat16"
[models."{MINILM}"]
provider = "local"
task = "embed"
"""


_workers: dict[str, WorkerProcess] = {}


def held_worker(start_worker: Callable[..., WorkerProcess], catalogue: Path) -> WorkerProcess:
    """The module's one worker, started the first time a test needs it."""
    if "held" not in _workers:
        _workers["held"] = start_worker("held", "held", env={"LLM_ROUTER_CONFIG": str(catalogue)})
    return _workers["held"]


def wait_for(check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.05)


def test_cancelled_and_expired_jobs_never_run(
    own_router: Router,
    own_catalogue: Path,
    start_worker: Callable[..., WorkerProcess],
    count_rows: Callable[[str], int],
) -> None:
    cancelled = own_router.embed("cancel me before any worker sees me", tier="held")
    expiring = own_router.embed("too late to start", tier="held", deadline_s=1.0)
    outcome = cancelled.cancel()
    assert outcome.cancelled == [cancelled.id] and not outcome.running and not outcome.ended
    with pytest.raises(JobCancelled, match="cancelled by its caller"):
        cancelled.wait(5)
    assert cancelled.cancel().ended == [cancelled.id]  # cancelling again changes nothing
    time.sleep(1.2)
    began = time.monotonic()
    with pytest.raises(JobExpired, match="not started within its deadline of 1 s"):
        expiring.wait(30)  # at once: past its deadline, it will never start
    assert time.monotonic() - began < 1.0
    # Now a worker takes both messages: neither runs.
    worker = held_worker(start_worker, own_catalogue)
    wait_for(lambda: expiring.status() == "expired")
    assert cancelled.status() == "cancelled"
    for job in (cancelled, expiring):
        assert job.attempts() == []
        assert count_rows(f"SELECT count(*) FROM usage WHERE job_id = '{job.id}'") == 0
    assert "expired: not started within" in worker.log()
    assert own_router.store.status_counts().get("cancelled", 0) >= 1


def test_a_running_generation_stops_at_its_next_token(
    own_router: Router, own_catalogue: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    held_worker(start_worker, own_catalogue)
    story = [{"role": "user", "content": "Write a very long story about the sea, chapter after chapter."}]
    job = own_router.generate(messages=story, max_tokens=2048, temperature=0)  # answered at length, every time
    wait_for(lambda: job.status() == "running")
    time.sleep(0.3)
    outcome = job.cancel()
    assert outcome.running == [job.id]
    began = time.monotonic()
    with pytest.raises(JobCancelled):
        job.wait(60)
    stopped_in_s = time.monotonic() - began
    record = job.record()
    assert record.status == "cancelled" and record.result is not None
    usage = record.result["usage"]
    assert 0 < usage["completion_tokens"] < 2048  # stopped early; what it made is recorded
    assert stopped_in_s < 10
    (attempt,) = job.attempts()
    assert attempt.status == "cancelled" and attempt.total_tokens == usage["total_tokens"]


def test_a_cancelled_batch_keeps_its_finished_results(
    own_router: Router, own_catalogue: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    held_worker(start_worker, own_catalogue)
    requests = [{"kind": "embed", "input": f"held {i}", "tier": "held"} for i in range(3)]
    requests += [{"kind": "embed", "input": f"parked {i}", "tier": "parked"} for i in range(3)]
    batch = own_router.batch(requests)
    held = [batch.jobs[i] for i in range(3)]
    for job in held:
        job.wait(60)
    outcome = own_router.cancel_batch(batch.batch_id)
    assert sorted(outcome.cancelled) == sorted(batch.jobs[i].id for i in range(3, 6))
    assert own_router.batch_progress(batch.batch_id) == {"succeeded": 3, "cancelled": 3}
    assert all(job.result() is not None for job in held)


def test_a_waiter_learns_of_the_cancel_at_once_and_async_jobs_cancel_too(
    own_router: Router, cluster_settings: Any, own_catalogue: Path
) -> None:
    job = own_router.embed("parked until cancelled", tier="parked")
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            job.wait(30)
        except BaseException as exc:
            raised.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    notices = redis.Redis.from_url(cluster_settings.resolved_broker_url)
    wait_for(lambda: notices.pubsub_numsub(channel(job.id))[0][1] == 1, timeout_s=10)  # the waiter listens
    notices.close()
    began = time.monotonic()
    job.cancel()
    waiter.join(10)
    assert isinstance(raised[0], JobCancelled)
    assert time.monotonic() - began < 1.0  # the notice woke it, not its 2-second safety read

    async def run() -> None:
        async with AsyncRouter(cluster_settings.model_copy(update={"config": own_catalogue})) as router:
            parked = await router.embed("async and parked", tier="parked")
            waiting = asyncio.create_task(parked.wait(30))
            await asyncio.sleep(0.2)
            assert (await parked.cancel()).cancelled == [parked.id]
            with pytest.raises(JobCancelled):
                await waiting

    asyncio.run(run())


def test_the_cancel_command(own_router: Router, cluster_env: dict[str, str], own_catalogue: Path) -> None:
    env = {**cluster_env, "LLM_ROUTER_CONFIG": str(own_catalogue)}
    job = own_router.embed("cancelled from the shell", tier="parked")
    command = [sys.executable, "-m", "llm_router.cli.main", "cancel"]
    done = subprocess.run([*command, job.id], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0 and "cancelled 1 waiting job(s)" in done.stdout
    assert Job(own_router.store, job.id, "embed").status() == "cancelled"
    unknown = subprocess.run([*command, "no-such-job"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert unknown.returncode == 2 and "no job no-such-job" in unknown.stderr
