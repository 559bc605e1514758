"""Bulk lanes and jobs run together, on the real services: a bulk batch waits behind interactive jobs, and
jobs that share a model call get the same answers as jobs run one by one, each with its own records."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.tasks.schemas import ClassifyResult, EmbedResult
from llm_router.workers.state import collect
from tests.conftest import ON_BOTH_BROKERS, ON_REDIS, WorkerProcess, empty_redis_db, local_catalogue, queued

BROKER = "redis://127.0.0.1:6379/6"
SENTENCES = [
    "I love this product, it works perfectly.",
    "Terrible service, I want my money back.",
    "The weather is fine.",
    "A quick brown fox jumps over the lazy dog while the river keeps flowing past the old mill.",
    "Great!",
    "This is the worst film I have seen in years and the sound was broken too.",
    "Queues, workers and databases keep the jobs safe.",
    "Paris is the capital of France.",
    "I am not sure how I feel about the new design of the website, some parts are nice.",
    "Awful.",
    "The cat sleeps on the warm window sill every afternoon.",
    "Thank you so much for the quick and friendly help!",
] * 3


@pytest.fixture(scope="module")
def broker(request: pytest.FixtureRequest, rabbit_vhost: Callable[[str], str]) -> str:
    return empty_redis_db(BROKER) if request.param == "redis" else rabbit_vhost("bulk_lanes")


@pytest.fixture(scope="module")
def env(cluster_env: dict[str, str], broker: str) -> dict[str, str]:
    return {**cluster_env, "LLM_ROUTER_BROKER_URL": broker}


@pytest.fixture(scope="module")
def settings(cluster_settings: Settings, broker: str) -> Settings:
    return cluster_settings.model_copy(update={"broker_url": broker})


def _name(name: str, broker: str) -> str:
    return name if broker == BROKER else f"{name}-rabbit"


def _attempts(pg_url: str, job_ids: list[str]) -> list[dict[str, Any]]:
    engine = create_engine(pg_url)
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT a.job_id, a.number, a.status, a.started_at, a.total_tokens, u.total_tokens AS usage_tokens "
                "FROM attempts a LEFT JOIN usage u ON u.job_id = a.job_id WHERE a.job_id = ANY(:ids)"
            ),
            {"ids": job_ids},
        )
        found = [dict(row._mapping) for row in rows]
    engine.dispose()
    return found


def _same(one: EmbedResult | ClassifyResult, other: EmbedResult | ClassifyResult) -> None:
    if isinstance(one, EmbedResult):
        assert isinstance(other, EmbedResult)
        for a, b in zip(one.data, other.data, strict=True):
            assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding, strict=True)) < 1e-5
    else:
        assert isinstance(other, ClassifyResult)
        for a, b in zip(one.data, other.data, strict=True):
            assert [s.label for s in a.labels] == [s.label for s in b.labels]
            assert max(abs(x.score - y.score) for x, y in zip(a.labels, b.labels, strict=True)) < 1e-5
    assert one.usage.total_tokens == other.usage.total_tokens


@ON_REDIS  # the model path; dynamic batching of RabbitMQ's messages is test_rabbitmq's 200 mixed jobs
def test_jobs_run_together_answer_as_jobs_run_one_by_one(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], settings: Settings, pg_url: str, broker: str
) -> None:
    worker = start_worker("fast", _name("together", broker), env=env)
    with Router(settings) as router:
        alone: dict[tuple[str, int], Any] = {}
        for kind in ("embed", "classify"):
            for i, sentence in enumerate(SENTENCES[:12]):
                alone[kind, i] = router.submit({"kind": kind, "input": sentence, "use_cache": False}).wait(60)

        # A bulk batch: many jobs per message, run through the model together.
        requests = [
            {"kind": kind, "input": sentence, "use_cache": False}
            for kind in ("embed", "classify")
            for sentence in SENTENCES
        ]
        submitted = router.batch(requests)
        batched = {position: job.wait(120) for position, job in submitted.jobs.items()}
        for position, request in enumerate(requests):
            _same(alone[request["kind"], position % len(SENTENCES) % 12], batched[position])

        # Greedy generation gives the same text whatever else the worker does: 8 prompts of different
        # lengths, 24 tokens, run one at a time, then all waiting together behind a busy job.
        prompts = [
            "Once upon a time",
            "The capital of France is",
            "List three colours:\n1.",
            "Dear diary,",
            "Write one sentence about the sea.",
            "Explain in a few words why the sky is blue, as you would to a child who keeps asking.",
            "Hi",
            "Give me a short recipe for a cheese sandwich, step by step, with the ingredients first.",
        ]
        greedy = {"temperature": 0.0, "max_tokens": 24, "use_cache": False}
        written = [router.generate(prompt, **greedy).wait(120) for prompt in prompts]

        # Interactive jobs that wait while the worker is busy join one model call (dynamic batching); for
        # generation, left-padded prompts with the same parameters.
        busy = router.generate("Write a long story about a lighthouse keeper.", max_tokens=24, use_cache=False)
        waiting = [router.embed(sentence, use_cache=False) for sentence in SENTENCES[:12]]
        busy.wait(120)
        for i, job in enumerate(waiting):
            _same(alone["embed", i], job.wait(60))
        busy = router.generate("Write a long story about a lighthouse keeper.", max_tokens=24, use_cache=False)
        again = [router.generate(prompt, **greedy) for prompt in prompts]
        for job, one_by_one in zip(again, written, strict=True):
            under_load: Any = job.wait(180)
            assert (under_load.text, under_load.usage) == (one_by_one.text, one_by_one.usage)  # type: ignore[union-attr]
        busy.wait(120)
        # Sampled generations with equal parameters do share a left-padded call.
        busy = router.generate("Write a long story about a lighthouse keeper.", max_tokens=24, use_cache=False)
        sampled = {"temperature": 0.8, "max_tokens": 8, "use_cache": False}
        stories = [router.generate(prompt, **sampled) for prompt in prompts[:4]]
        for job in stories:
            assert job.wait(120).usage.completion_tokens > 0  # type: ignore[union-attr]

    bulk_ids = [job.id for job in submitted.jobs.values()]
    rows = _attempts(pg_url, bulk_ids)
    assert len(rows) == len(bulk_ids)  # one attempt each
    assert all(r["status"] == "succeeded" and r["usage_tokens"] == r["total_tokens"] > 0 for r in rows)
    assert len({r["started_at"] for r in rows}) <= 4  # a group starts in one transaction: one timestamp
    waited = _attempts(pg_url, [job.id for job in waiting])
    assert len({r["started_at"] for r in waited}) < len(waiting)  # the waiting ones were run together
    assert "jobs succeeded together kind=embed" in worker.log()
    assert "jobs succeeded together kind=classify" in worker.log()
    assert "jobs succeeded together kind=generate" in worker.log()
    assert len({r["started_at"] for r in _attempts(pg_url, [job.id for job in stories])}) < len(stories)
    greedy_starts = [r["started_at"] for r in _attempts(pg_url, [job.id for job in again])]
    assert len(set(greedy_starts)) == len(again)  # each greedy one ran on its own


@ON_REDIS  # RabbitMQ has no order across queues (README, "Which broker")
def test_interactive_jobs_behind_500_bulk_jobs_start_first(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], settings: Settings, pg_url: str
) -> None:
    # One job per message and no dynamic batching: this is the order in which the worker takes messages.
    start_worker("balanced", "lanes", env=env, options=("--max-batch", "1", "--bulk-window", "1"))
    with Router(settings.model_copy(update={"bulk_message_jobs": 1})) as router:
        bulk = router.batch([{"kind": "embed", "input": f"bulk sentence {i}", "tier": "balanced"} for i in range(500)])
        deadline = time.monotonic() + 120
        while router.batch_progress(bulk.batch_id).get("succeeded", 0) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        waiting_bulk = queued(redis.Redis.from_url(BROKER), "balanced.bulk")
        interactive = [router.embed(f"interactive request {i}", tier="balanced") for i in range(5)]
        for job in interactive:
            job.wait(120)
        while router.batch_progress(bulk.batch_id).get("succeeded", 0) < 500:
            assert time.monotonic() < deadline + 180, router.batch_progress(bulk.batch_id)
            time.sleep(0.2)
        submitted_at = min(job.record().created_at for job in interactive)
    assert waiting_bulk >= 400  # hundreds of bulk messages were queued in front of them
    last_interactive = max(r["started_at"] for r in _attempts(pg_url, [job.id for job in interactive]))
    bulk_starts = [r["started_at"] for r in _attempts(pg_url, [job.id for job in bulk.jobs.values()])]
    overtaken = [t for t in bulk_starts if submitted_at < t < last_interactive]
    assert len(overtaken) <= 1, overtaken  # at most the bulk job already in hand when they arrived


@ON_BOTH_BROKERS
def test_an_interactive_job_runs_between_the_passes_of_a_bulk_call(
    start_worker: Callable[..., WorkerProcess],
    env: dict[str, str],
    settings: Settings,
    pg_url: str,
    broker: str,
    tmp_path: Path,
) -> None:
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(local_catalogue("interlude"))
    texts = [f"bulk sentence {i}: {SENTENCES[i % len(SENTENCES)]} {SENTENCES[-1 - i % 7]}" for i in range(1024)]
    with Router(settings.model_copy(update={"config": catalogue})) as router:
        # Queued before the worker starts, so its first bulk call takes all 1,024 inputs: 16 passes of 64.
        bulk = router.batch([{"kind": "embed", "input": t, "tier": "interlude", "use_cache": False} for t in texts])
        options = ("--bulk-window", "1024")
        worker = start_worker(
            "interlude", _name("interlude", broker), env={**env, "LLM_ROUTER_CONFIG": str(catalogue)}, options=options
        )
        deadline = time.monotonic() + 60
        while router.batch_progress(bulk.batch_id).get("running", 0) < 1024:
            assert time.monotonic() < deadline, router.batch_progress(bulk.batch_id)
            time.sleep(0.01)
        interactive = router.embed("an interactive question", tier="interlude", use_cache=False)
        assert isinstance(interactive.wait(60), EmbedResult)
        while router.batch_progress(bulk.batch_id).get("succeeded", 0) < 1024:
            assert time.monotonic() < deadline + 120, router.batch_progress(bulk.batch_id)
            time.sleep(0.1)
        answered_at = interactive.record().finished_at
    bulk_ended = _finished_at(pg_url, [job.id for job in bulk.jobs.values()])
    worker.stop()
    assert answered_at is not None and len(bulk_ended) == 1024
    # The bulk call was running when the interactive job came; it ended after the interactive job did.
    assert answered_at < min(bulk_ended)
    assert "between the passes of a bulk call: 1 interactive messages ran" in worker.log()


def _finished_at(pg_url: str, job_ids: list[str]) -> list[Any]:
    engine = create_engine(pg_url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT finished_at FROM jobs WHERE id = ANY(:ids)"), {"ids": job_ids})
        found = [row.finished_at for row in rows]
    engine.dispose()
    return found


@ON_BOTH_BROKERS
def test_jobs_taken_into_a_batch_survive_a_killed_process(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], settings: Settings, pg_url: str, broker: str
) -> None:
    # Sampled (greedy generations run alone), long enough to be cut off.
    sampled = {"tier": "quality", "temperature": 0.7, "max_tokens": 150, "use_cache": False}
    with Router(settings) as router:
        # Queued before any worker serves the tier: the first process takes one and the other three with it.
        jobs = [router.generate(f"Story number {i}: once upon a time", **sampled) for i in range(4)]
        worker = start_worker("quality", _name("killable", broker), env={**env, "LLM_ROUTER_LEASE_S": "3"})
        deadline = time.monotonic() + 120
        while not all(job.status() == "running" for job in jobs):  # one group: they start together
            assert time.monotonic() < deadline, [job.status() for job in jobs]
            time.sleep(0.02)
        (child,) = collect(worker.process.pid)
        os.kill(child["pid"], signal.SIGKILL)
        # Celery hands the message it delivered back at once. On Redis the messages taken into the batch stay
        # unacked until the broker's lease ends, and the database holds their jobs as running under the dead
        # process's lease: once it has run out (3 s), requeue them. RabbitMQ hands them back at once, with the
        # dead process's connection: nothing to do.
        if broker == BROKER:
            time.sleep(4.5)
            requeued = {job.id for job in router.requeue_stale(1.0).requeued}
            assert len(requeued & {job.id for job in jobs}) >= 3
        for job in jobs:
            job.wait(180)
    assert worker.alive()
    rows = _attempts(pg_url, [job.id for job in jobs])
    for job in jobs:
        statuses = sorted(r["status"] for r in rows if r["job_id"] == job.id)
        assert statuses == ["lost", "succeeded"], statuses  # the cut-off attempt, then one that finished
    engine = create_engine(pg_url)
    with engine.connect() as connection:
        counts = connection.execute(
            text("SELECT count(*) FROM usage WHERE job_id = ANY(:ids) GROUP BY job_id"), {"ids": [j.id for j in jobs]}
        ).scalars()
        assert sorted(counts) == [1, 1, 1, 1]  # exactly once each
    engine.dispose()
