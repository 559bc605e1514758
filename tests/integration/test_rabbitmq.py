"""The cluster on RabbitMQ, a documented broker: py-amqp hands out raw messages where kombu's Redis transport
hands out kombu ones, and a worker's dynamic batching must take, run and acknowledge them all the same."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from llm_router.broker.client import Job, Router
from llm_router.broker.settings import Settings
from llm_router.tasks.records import AttemptStatus
from tests.conftest import WorkerProcess, rabbit_queue_counts


@pytest.fixture(scope="module")
def env(cluster_env: dict[str, str], rabbit_url: str) -> dict[str, str]:
    return {**cluster_env, "LLM_ROUTER_BROKER_URL": rabbit_url}


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., WorkerProcess], env: dict[str, str]) -> Iterator[list[WorkerProcess]]:
    started = [
        start_worker("fast,balanced,quality", f"rabbit-{n}", env=env, options=("--max-wait-ms", "5")) for n in (1, 2)
    ]
    yield started
    for worker in started:
        worker.stop()


def _requests(n: int, offset: int) -> list[dict[str, Any]]:
    """Mixed kinds: mostly embed and classify (they batch), some short generations."""
    requests: list[dict[str, Any]] = []
    for i in range(offset, offset + n):
        if i % 10 == 0:
            requests.append({"kind": "generate", "prompt": f"Count to {i}:", "max_tokens": 4, "temperature": 0})
        elif i % 2:
            requests.append({"kind": "embed", "input": f"sentence number {i} about queues"})
        else:
            requests.append({"kind": "classify", "input": f"I really liked item {i}"})
    return requests


@pytest.mark.slow
def test_200_mixed_jobs_from_two_producers_all_succeed_once_and_leave_no_message(
    workers: list[WorkerProcess], cluster_settings: Settings, rabbit_url: str, pg_url: str
) -> None:
    settings = cluster_settings.model_copy(update={"broker_url": rabbit_url, "cache_ttl_s": 0})
    jobs: list[Job] = []
    lock = threading.Lock()
    problems: list[BaseException] = []

    routers = [Router(settings), Router(settings)]

    def interactive() -> None:  # one message per job, submitted in a row
        try:
            for request in _requests(100, 0):
                job = routers[0].submit({**request, "use_cache": False})
                with lock:
                    jobs.append(job)
        except BaseException as exc:  # reported below: a thread's exception would be lost
            problems.append(exc)

    def bulk() -> None:  # bulk messages of many jobs
        try:
            submitted = routers[1].batch([{**r, "use_cache": False} for r in _requests(100, 100)])
            assert not submitted.errors
            with lock:
                jobs.extend(submitted.jobs.values())
        except BaseException as exc:
            problems.append(exc)

    try:
        producers = [threading.Thread(target=interactive), threading.Thread(target=bulk)]
        for thread in producers:
            thread.start()
        for thread in producers:
            thread.join(timeout=120)
        assert not problems, problems
        assert len(jobs) == 200
        deadline = time.monotonic() + 180
        for job in jobs:
            job.wait(timeout=max(1.0, deadline - time.monotonic()))  # raises JobFailed/JobTimeout
    finally:
        for router in routers:
            router.close()

    engine = create_engine(pg_url)
    with engine.connect() as connection:
        ids = [job.id for job in jobs]
        rows = connection.execute(
            text(
                "SELECT job_id, count(*) AS n, min(status) AS status FROM attempts"
                " WHERE job_id = ANY(:ids) GROUP BY job_id"
            ),
            {"ids": ids},
        ).all()
    engine.dispose()
    assert len(rows) == 200
    assert {(n, status) for _, n, status in rows} == {(1, "succeeded")}  # exactly one attempt each

    deadline = time.monotonic() + 15  # acknowledgements follow the records by a few milliseconds
    while True:
        counts = rabbit_queue_counts(rabbit_url)
        if all(counts[name] == (0, 0) for name in counts) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert counts and all(pending == (0, 0) for pending in counts.values()), counts
    for worker in workers:
        assert worker.alive()
        assert "not a JSON task message" not in worker.log()
        assert "Traceback" not in worker.log()


KILL_CATALOGUE = """
default_tier = "rabbit_kill"
tier_order = ["rabbit_kill"]
[tiers.rabbit_kill]
generate = ["HuggingFaceTB/SmolLM2-135M-Instruct"]
[models."HuggingFaceTB/SmolLM2-135M-Instruct"]
dtype = "bfloat16"
"""


@pytest.mark.slow
def test_a_worker_killed_whole_has_its_job_redelivered_at_once(
    start_worker: Callable[..., WorkerProcess],
    env: dict[str, str],
    cluster_settings: Settings,
    rabbit_url: str,
    tmp_path: Path,
) -> None:
    config = tmp_path / "catalogue.toml"
    config.write_text(KILL_CATALOGUE)
    kill_env = {**env, "LLM_ROUTER_CONFIG": str(config)}
    assert kill_env["LLM_ROUTER_SWEEP_INTERVAL_S"] == "0"  # no sweeper: the redelivery is RabbitMQ's own
    doomed = start_worker("rabbit_kill", "rabbit-doomed", env=kill_env)
    survivor = start_worker("rabbit_kill", "rabbit-survivor", env=kill_env)
    settings = cluster_settings.model_copy(update={"broker_url": rabbit_url, "config": config})
    with Router(settings) as router:
        jobs = [router.generate(f"Tell a long story about ship {i}.", max_tokens=300) for i in range(2)]
        deadline = time.monotonic() + 60
        while not all(job.status() == "running" for job in jobs):  # one on each worker
            assert time.monotonic() < deadline, [job.status() for job in jobs]
            time.sleep(0.1)
        time.sleep(1.0)  # mid-generation
        doomed.kill_whole()
        for job in jobs:
            job.wait(timeout=120)
        paths = sorted([attempt.status for attempt in job.attempts()] for job in jobs)
        assert paths == [
            [AttemptStatus.LOST, AttemptStatus.SUCCEEDED],
            [AttemptStatus.SUCCEEDED],
        ]  # the killed one ran again, once
        lost = next(job for job in jobs if len(job.attempts()) == 2)
        # Taken over by the survivor on the connection's loss, not after a lease or a visibility timeout.
        assert lost.attempts()[1].worker == survivor.nodename
    deadline = time.monotonic() + 15
    while any(pending != (0, 0) for pending in rabbit_queue_counts(rabbit_url).values()):
        assert time.monotonic() < deadline, rabbit_queue_counts(rabbit_url)
        time.sleep(0.5)
