"""Retention: old final jobs are pruned whole or down to their bookkeeping; nothing unfinished is touched. On
PostgreSQL and on the laptop mode's SQLite, through the CLI, and by the sweeper once an hour."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import select, text, update

from llm_router.cli.main import cli
from llm_router.tasks.database import make_engine, upgrade
from llm_router.tasks.records import (
    AttemptRecord,
    JobRecord,
    JobStatus,
    RunRecord,
    RunStatus,
    UsageRecord,
    WebhookAttemptRecord,
    WebhookRecord,
    WebhookStatus,
)
from llm_router.tasks.schemas import Embedding, EmbedResult, Usage
from llm_router.tasks.store import JobStore, JobView, Lease
from llm_router.workers.sweeper import PRUNED_KEY, Retain, Sweeper
from tests.conftest import fresh_database
from tests.support.store import start_one, submit_one, succeed_one

SWEEPER_REDIS = "redis://127.0.0.1:6379/15"
LEASE = Lease(owner="host:1", seconds=60, alive=lambda _: True)


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'laptop.db'}"
        upgrade(make_engine(url))
        yield url
        return
    with fresh_database() as url:
        yield url


@pytest.fixture
def store(database: str) -> Iterator[JobStore]:
    store = JobStore(make_engine(database))
    yield store
    store.engine.dispose()


def _job(store: JobStore, *, days_old: float, finish: bool) -> str:
    job_id = str(uuid.uuid4())
    submit_one(store, job_id=job_id, kind="embed", request={"input": "x"}, tier="fast", queue="fast")
    number = start_one(store, job_id, model="m", provider="local", tier="fast", worker="w", lease=LEASE)
    assert isinstance(number, int)
    if finish:
        result = EmbedResult(model="m", data=[Embedding(index=0, embedding=[0.5])], usage=Usage(prompt_tokens=1))
        succeed_one(store, job_id, number, result=result, provider="local", model_latency_ms=1.0)
    with store.sessions.begin() as session:
        session.execute(
            update(JobRecord)
            .where(JobRecord.id == job_id)
            .values(created_at=datetime.now(UTC) - timedelta(days=days_old))
        )
    return job_id


def _rows(store: JobStore, job_id: str) -> tuple[JobView | None, int, int]:
    with store.session() as session:
        attempts = len(session.scalars(select(AttemptRecord).where(AttemptRecord.job_id == job_id)).all())
        usage = len(session.scalars(select(UsageRecord).where(UsageRecord.job_id == job_id)).all())
    return store.get(job_id), attempts, usage


def test_prune_takes_old_final_jobs_and_leaves_the_rest(store: JobStore) -> None:
    old, recent, running = (
        _job(store, days_old=40, finish=True),
        _job(store, days_old=1, finish=True),
        _job(store, days_old=40, finish=False),
    )
    cutoff = datetime.now(UTC) - timedelta(days=30)
    assert store.prune(cutoff, dry_run=True).jobs == 1 and _rows(store, old)[0] is not None  # counted, kept

    emptied = store.prune(cutoff, results_only=True)
    assert emptied.jobs == 1
    job, attempts, usage = _rows(store, old)
    assert job is not None and job.status == JobStatus.SUCCEEDED and job.request is None and job.result is None
    assert (attempts, usage) == (1, 1)  # the usage report stays whole
    assert store.prune(cutoff, results_only=True).jobs == 0  # nothing left to empty

    assert store.prune(cutoff).jobs == 1
    assert _rows(store, old) == (None, 0, 0)
    kept, attempts, usage = _rows(store, recent)
    assert kept is not None and kept.result is not None and (attempts, usage) == (1, 1)
    unfinished = store.get(running)
    assert unfinished is not None and unfinished.status == JobStatus.RUNNING  # never pruned, however old
    sizes = store.table_sizes()
    assert set(sizes) == {"jobs", "attempts", "usage", "runs", "webhooks"}
    with store.session() as session:  # small tables are counted, whatever PostgreSQL's statistics say
        counted = session.scalar(text("SELECT count(*) FROM jobs"))
    assert counted and sizes["jobs"].rows == counted and not sizes["jobs"].estimated


def _run(store: JobStore, days_old: float, status: RunStatus) -> str:
    run_id = str(uuid.uuid4())
    store.create_run(run_id, "pipeline", "reply", ["fast"], {"text": "what the user wrote"})
    if status != RunStatus.RUNNING:
        store.finish_run(run_id, status, {"steps": []})
    with store.sessions.begin() as session:
        moment = datetime.now(UTC) - timedelta(days=days_old)
        session.execute(update(RunRecord).where(RunRecord.id == run_id).values(created_at=moment))
    return run_id


def test_prune_takes_old_ended_runs_with_their_jobs(store: JobStore) -> None:
    old, recent, running = (
        _run(store, 40, RunStatus.SUCCEEDED),
        _run(store, 1, RunStatus.FAILED),
        _run(store, 40, RunStatus.RUNNING),
    )
    cutoff = datetime.now(UTC) - timedelta(days=30)
    store.prune(cutoff, results_only=True)
    emptied = store.get_run(old)
    assert emptied is not None and emptied.request is None and emptied.summary == {"steps": []}  # figures kept
    store.prune(cutoff)
    assert store.get_run(old) is None
    kept = store.get_run(recent)
    assert kept is not None and kept.request == {"text": "what the user wrote"}
    assert store.get_run(running) is not None  # a run still going is never pruned


def _webhook(store: JobStore, days_old: float, outcome: WebhookStatus | None) -> str:
    webhook_id = store.claim_webhook(f"job:{uuid.uuid4()}", "job.ended", "https://hooks.example.com/x", "fast")
    assert webhook_id is not None
    if outcome is not None:
        store.record_delivery(webhook_id, status_code=200, error=None, latency_ms=3.0, outcome=outcome)
    with store.sessions.begin() as session:
        moment = datetime.now(UTC) - timedelta(days=days_old)
        session.execute(update(WebhookRecord).where(WebhookRecord.id == webhook_id).values(created_at=moment))
    return webhook_id


def test_prune_takes_old_ended_webhooks_with_their_attempts(store: JobStore) -> None:
    old = _webhook(store, 40, WebhookStatus.DELIVERED)
    recent = _webhook(store, 1, WebhookStatus.DELIVERED)
    pending = _webhook(store, 40, None)
    cutoff = datetime.now(UTC) - timedelta(days=30)
    store.prune(cutoff, results_only=True)
    assert store.webhook(old) is not None  # pruned to results, the bookkeeping stays
    store.prune(cutoff)
    assert store.webhook(old) is None
    with store.session() as session:
        left = session.scalars(select(WebhookAttemptRecord.webhook_id)).all()
    assert old not in left and recent in left
    assert store.webhook(recent) is not None and store.webhook(pending) is not None  # a delivery due is kept


def test_the_prune_command(database: str) -> None:
    store = JobStore(make_engine(database))
    old = _job(store, days_old=10, finish=True)
    env = {"LLM_ROUTER_DATABASE_URL": database, "LLM_ROUTER_BROKER_URL": "redis://127.0.0.1:6379/15"}
    dry = CliRunner().invoke(cli, ["prune", "--older-than", "7d", "--dry-run", "--json"], env=env)
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["jobs"] == 1 and json.loads(dry.output)["dry_run"] is True
    done = CliRunner().invoke(cli, ["prune", "--older-than", "7d"], env=env)
    assert done.exit_code == 0 and "pruned" in done.output and store.get(old) is None
    bad = CliRunner().invoke(cli, ["prune", "--older-than", "soon"], env=env)
    assert bad.exit_code == 2 and "--older-than" in bad.output
    store.engine.dispose()


def test_the_sweeper_prunes_once_an_hour(store: JobStore) -> None:
    client = redis.Redis.from_url(SWEEPER_REDIS)
    client.delete(PRUNED_KEY)
    old = _job(store, days_old=40, finish=True)
    sweeper = Sweeper(
        store,
        client,
        lambda *_: None,
        lambda _job: None,
        interval_s=10,
        lost_message_after_s=1800,
        retention=Retain(days=30, results_only=True),
    )
    sweeper.sweep()
    job = store.get(old)
    assert job is not None and job.request is None  # pruned to its bookkeeping
    assert 3500 < int(client.ttl(PRUNED_KEY)) <= 3600  # the next prune of the cluster is an hour away
    client.delete(PRUNED_KEY)
