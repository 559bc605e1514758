"""Nothing lost, nothing doubled, nothing hostile gets through: on the real Redis, Postgres and workers."""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.cli.main import cli
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.schemas import EmbedResult, GenerateResult
from llm_router.workers.state import collect
from ops.bench.faults import postgres, restart_rabbitmq, restart_redis
from tests.conftest import (
    ON_BOTH_BROKERS,
    ON_RABBITMQ,
    ON_REDIS,
    REPO,
    WorkerProcess,
    empty_redis_db,
    producer_settings,
    publish_raw,
    second_run,
)

BROKER = "redis://127.0.0.1:6379/9"
TOKEN = "hf_RELIABILITY_sentinel_0a9b8c7d"


@pytest.fixture(scope="module")
def broker(request: pytest.FixtureRequest, rabbit_vhost: Callable[[str], str]) -> str:
    return empty_redis_db(BROKER) if request.param == "redis" else rabbit_vhost("reliability")


@pytest.fixture(scope="module")
def env(cluster_env: dict[str, str], broker: str) -> dict[str, str]:
    return {**cluster_env, "LLM_ROUTER_BROKER_URL": broker, "HUGGINGFACE_API_KEY": TOKEN, **second_run(broker)}


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], env: dict[str, str], broker: str) -> WorkerProcess:
    name = "reliability" if broker == BROKER else "reliability-rabbit"
    return start_worker("fast,balanced,quality", name, env=env)


@pytest.fixture(scope="module")
def router(cluster_settings: Settings, broker: str) -> Iterator[Router]:
    with Router(producer_settings(cluster_settings, broker)) as router:
        yield router


@pytest.fixture(scope="module")
def db(pg_url: str) -> Iterator[Callable[..., list[dict[str, Any]]]]:
    engine = create_engine(pg_url, pool_pre_ping=True)  # survives the Postgres restart below

    def rows(sql: str, **params: Any) -> list[dict[str, Any]]:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(sql), params)]

    yield rows
    engine.dispose()


@ON_BOTH_BROKERS
def test_a_worker_process_killed_mid_job_leaves_the_job_to_finish_exactly_once(
    worker: WorkerProcess, router: Router, db: Callable[..., list[dict[str, Any]]]
) -> None:
    job = router.generate("Once upon a time, in a city of queues,", tier="fast", max_tokens=120, seed=11)
    deadline = time.monotonic() + 60
    while job.status() != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    (child,) = collect(worker.process.pid)  # the pool process running the model
    os.kill(child["pid"], signal.SIGKILL)

    result = job.wait(timeout=120)
    assert isinstance(result, GenerateResult) and result.usage.completion_tokens > 0
    assert worker.alive()
    attempts = db("SELECT number, status, error FROM attempts WHERE job_id = :id ORDER BY number", id=job.id)
    assert [a["status"] for a in attempts] == ["lost", "succeeded"]
    assert "worker was lost" in attempts[0]["error"]
    assert db("SELECT count(*) AS n FROM usage WHERE job_id = :id", id=job.id)[0]["n"] == 1
    (row,) = db("SELECT status, attempts FROM jobs WHERE id = :id", id=job.id)
    assert row == {"status": "succeeded", "attempts": 2}


@ON_BOTH_BROKERS
def test_requeue_stale_recovers_jobs_whose_messages_the_broker_lost(
    worker: WorkerProcess, router: Router, env: dict[str, str]
) -> None:
    # A job recorded as queued whose message never reached a queue: what a broker restart without
    # persistence leaves behind.
    planned = router.prepare({"kind": "embed", "input": "a message the broker lost", "tier": "quality"})
    job_id = str(uuid.uuid4())
    assert router.store.submit([planned.new_job(job_id)]) == {job_id}
    lost = router.get(job_id)
    time.sleep(1.5)
    assert lost.status() == "queued"
    dry = CliRunner().invoke(cli, ["requeue", "--stale", "--older-than", "1s", "--dry-run", "--json"], env=env)
    assert dry.exit_code == 0 and lost.id in dry.output and json.loads(dry.output)["requeued"] == 0
    done = CliRunner().invoke(cli, ["requeue", "--stale", "--older-than", "1s", "--json"], env=env)
    assert done.exit_code == 0 and json.loads(done.output)["requeued"] >= 1
    lost.wait(timeout=60)
    # Requeueing again cannot run it twice: the worker skips a job that already ended.
    CliRunner().invoke(cli, ["requeue", "--stale", "--older-than", "1s"], env=env)
    assert len([a for a in lost.attempts() if a.status == "succeeded"]) == 1


HUGE = "x" * 10_000_000
NESTED = "[" * 10_000 + "]" * 10_000
JSON = "application/json"

ROUTER_CASES: list[tuple[str, dict[str, Any], str]] = [
    # (kind, request fields, words of the error)
    ("generate", {"prompt": HUGE}, "prompt"),  # a 10 MB prompt
    ("generate", {"prompt": "hi", "max_tokens": -5}, "max_tokens"),  # negative
    ("generate", {"prompt": "hi", "max_tokens": 10**12}, "max_tokens"),  # huge
    ("generate", {"prompt": "hi", "temperature": float("nan")}, "temperature"),  # NaN
    ("generate", {"prompt": "hi", "top_p": float("inf")}, "top_p"),  # infinity
    ("generate", {"prompt": "ring \x07 the bell"}, "control characters"),  # control character
    ("generate", {"prompt": "escape \x1b[2J sequences"}, "control characters"),  # terminal escape
    ("generate", {"prompt": "nul \x00 byte"}, "NUL"),  # Postgres cannot hold it
    ("generate", {"prompt": "hi", "model": "../../etc/passwd"}, "model"),  # path traversal
    ("generate", {"prompt": "hi", "model": "/etc/passwd"}, "model"),  # absolute path
    ("generate", {"prompt": "hi", "model": "x'; DROP TABLE jobs; --"}, "model"),  # SQL in a model name
    ("generate", {"prompt": "hi", "tier": "fast'; DELETE FROM jobs; --"}, "tier"),  # SQL in a tier
    ("generate", {"prompt": "hi", "tier": "platinum"}, "tier"),  # unknown tier
    ("generate", {"prompt": {"$gt": ""}}, "prompt"),  # an object where text belongs
    ("generate", {"messages": [{"role": "root", "content": "x"}]}, "role"),  # bad chat role
    ("generate", {"messages": [{"role": "user", "content": "x"}] * 1000}, "messages"),  # too many messages
    ("embed", {"input": ["a"] * 100_000}, "input"),  # a huge embed list
    ("embed", {"input": [[[["deep"]]]]}, "input.0"),  # nested lists
    ("classify", {"input": ["ok", 42]}, "input.1"),  # mixed types
    ("classify", {"input": "hi", "__class__": "x"}, "__class__"),  # unknown field
]


@pytest.mark.parametrize(("kind", "fields", "words"), ROUTER_CASES)
@ON_REDIS
def test_hostile_input_through_the_router(router: Router, kind: str, fields: dict[str, Any], words: str) -> None:
    before = sum(router.store.status_counts().values())  # jobs of other tests may change status meanwhile
    with pytest.raises(InvalidRequest) as caught:
        router.submit({"kind": kind, **fields})
    assert words in str(caught.value)
    assert len(str(caught.value)) < 2_000  # a clear message, not the input echoed back
    assert sum(router.store.status_counts().values()) == before  # nothing recorded


CLI_CASES: list[tuple[list[str], str]] = [
    (["generate", "hi", "--params", NESTED], "nested too deeply"),  # deeply nested JSON
    (["generate", "hi", "--max-tokens", "-1"], "max_tokens"),
    (["generate", "hi", "--temperature", "nan"], "temperature"),
    (["generate", "hi", "--model", "../../etc"], "model"),
    (["generate", "hi\x1b]0;pwned\x07"], "control characters"),
]


@pytest.mark.parametrize(("arguments", "words"), CLI_CASES)
@ON_REDIS
def test_hostile_input_through_the_cli(env: dict[str, str], arguments: list[str], words: str) -> None:
    outcome = CliRunner().invoke(cli, ["submit", *arguments], env=env)
    assert outcome.exit_code == 2 and words in outcome.output, outcome.output


@ON_BOTH_BROKERS
def test_hostile_broker_messages_are_refused_or_rejected_and_the_worker_stays_up(
    worker: WorkerProcess, router: Router, db: Callable[..., list[dict[str, Any]]], broker: str
) -> None:
    def _publish(body: bytes, content_type: str, task: str, task_id: str) -> None:
        publish_raw(broker, "fast", body, content_type, task, task_id)

    cwd_before = set(os.listdir(REPO))  # the worker's working directory
    ids = [str(uuid.uuid4()) for _ in range(6)]
    cases: list[tuple[str, Callable[[], None]]] = [
        (
            "pickle payload",
            lambda: _publish(
                pickle.dumps(([ids[0]], {}, {})), "application/x-python-serialize", "tasks.generate", ids[0]
            ),
        ),
        ("not JSON", lambda: _publish(f'\xff\xfe [["{ids[1]}"]'.encode("latin-1"), JSON, "tasks.generate", ids[1])),
        (
            "deeply nested JSON",
            lambda: _publish(f'[["{ids[2]}"], {{"request": {NESTED}}}, {{}}]'.encode(), JSON, "tasks.embed", ids[2]),
        ),
        ("unknown task", lambda: router.app.send_task("os.system", args=["rm -rf /"], queue="fast")),
        (
            "NaN in the request",
            lambda: router.app.send_task(
                "tasks.generate",
                kwargs={"job_id": ids[3], "request": {"prompt": "x", "temperature": float("nan")}},
                queue="fast",
            ),
        ),
        (
            "path traversal model",
            lambda: router.app.send_task(
                "tasks.embed",
                kwargs={"job_id": ids[4], "request": {"input": "x", "model": "../../../etc/passwd"}},
                queue="fast",
            ),
        ),
        (
            "a huge prompt",
            lambda: router.app.send_task(
                "tasks.generate", kwargs={"job_id": ids[5], "request": {"prompt": "y" * 1_000_000}}, queue="fast"
            ),
        ),
    ]
    for _, send in cases:
        send()
    after = router.embed("still serving after the hostile messages", tier="fast", use_cache=False)
    after.wait(timeout=60)
    assert worker.alive()
    for job_id, words in ((ids[3], "temperature"), (ids[4], "model"), (ids[5], "prompt")):
        # Other workers of the session may share the queue: each message is recorded by whichever took it.
        deadline = time.monotonic() + 30
        while not (rows := db("SELECT status, error FROM jobs WHERE id = :id", id=job_id)):
            assert time.monotonic() < deadline, f"the message of job {job_id} was never recorded"
            time.sleep(0.1)
        (row,) = rows
        assert row["status"] == "rejected" and words in row["error"]
    # Each carries its job id, but in a body no worker may decode: refused, nothing recorded, nothing run.
    assert db("SELECT count(*) AS n FROM jobs WHERE id IN (:a, :b, :c)", a=ids[0], b=ids[1], c=ids[2])[0]["n"] == 0
    assert set(os.listdir(REPO)) == cwd_before


@ON_REDIS
def test_secrets_appear_in_no_log_record_or_status(
    worker: WorkerProcess, env: dict[str, str], db: Callable[..., list[dict[str, Any]]]
) -> None:
    assert TOKEN not in worker.log()
    for table in ("jobs", "attempts", "usage"):
        assert TOKEN not in json.dumps(db(f"SELECT * FROM {table}"), default=str)
    status = CliRunner().invoke(
        cli,
        ["status", "--json"],
        env={
            **env,
            "LLM_ROUTER_DATABASE_URL": env["LLM_ROUTER_DATABASE_URL"].replace("postgres@", "postgres:pg-secret-pass@"),
        },
    )
    assert "pg-secret-pass" not in status.output and TOKEN not in status.output


@pytest.mark.slow
@ON_BOTH_BROKERS
def test_postgres_restarted_while_jobs_run(
    worker: WorkerProcess, router: Router, db: Callable[..., list[dict[str, Any]]]
) -> None:
    jobs = [router.generate(f"Restart story {i}:", tier="fast", max_tokens=24, seed=i) for i in range(6)]
    deadline = time.monotonic() + 60
    while jobs[0].status() != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    postgres("stop")  # the worker is mid-way through the batch
    try:
        # Down until the worker has met the outage (the next job it records), however long a generation takes.
        deadline = time.monotonic() + 120
        while "database unavailable" not in worker.log():
            assert time.monotonic() < deadline, worker.log()[-2000:]
            time.sleep(0.2)
        assert worker.alive()
    finally:
        postgres("start")
    for job in jobs:
        assert isinstance(job.wait(timeout=120), GenerateResult)
    assert worker.alive()
    ids = {f"j{i}": job.id for i, job in enumerate(jobs)}
    placeholders = ", ".join(f":{name}" for name in ids)
    rows = db(f"SELECT status, attempts FROM jobs WHERE id IN ({placeholders})", **ids)
    assert [row["status"] for row in rows] == ["succeeded"] * len(jobs)
    usage = db(f"SELECT job_id FROM usage WHERE job_id IN ({placeholders})", **ids)
    assert len(usage) == len(jobs)  # written once each, after the database came back


@pytest.mark.slow
@ON_REDIS
def test_redis_restarted_workers_reconnect_and_lost_jobs_are_recovered(
    worker: WorkerProcess, router: Router, env: dict[str, str], db: Callable[..., list[dict[str, Any]]]
) -> None:
    jobs = [router.generate(f"Broker restart story {i}:", tier="fast", max_tokens=24, seed=i) for i in range(4)]
    restart_redis()  # the queued messages vanish with it
    assert worker.alive()

    # New work flows once the worker has reconnected by itself.
    fresh = router.embed("after the broker came back", tier="fast", use_cache=False)
    assert isinstance(fresh.wait(timeout=60), EmbedResult)

    # The database still knows every job: requeue what the broker lost.
    time.sleep(1.5)
    outcome = CliRunner().invoke(cli, ["requeue", "--stale", "--older-than", "1s", "--json"], env=env)
    assert outcome.exit_code == 0, outcome.output
    for job in jobs:
        assert isinstance(job.wait(timeout=120), GenerateResult)
    ids = {f"j{i}": job.id for i, job in enumerate(jobs)}
    placeholders = ", ".join(f":{name}" for name in ids)
    assert len(db(f"SELECT job_id FROM usage WHERE job_id IN ({placeholders})", **ids)) == len(jobs)
    assert worker.alive()


@ON_RABBITMQ
@pytest.mark.slow
def test_rabbitmq_restarted_keeps_its_messages_and_the_worker_reconnects(
    worker: WorkerProcess, router: Router, db: Callable[..., list[dict[str, Any]]]
) -> None:
    jobs = [router.generate(f"Broker restart story {i}:", tier="fast", max_tokens=24, seed=i) for i in range(4)]
    deadline = time.monotonic() + 60
    while jobs[0].status() == "queued":  # one taken, the others waiting in the queue
        assert time.monotonic() < deadline
        time.sleep(0.05)
    restart_rabbitmq()  # durable queues and persistent messages: what waited is still there
    assert worker.alive()
    # No command run: the worker reconnects by itself, the waiting messages are still queued, and the one it
    # held unacknowledged is handed out again (its job then found running here, or ended: run once).
    for job in jobs:
        assert isinstance(job.wait(timeout=180), GenerateResult)
    fresh = router.embed("after the broker came back", tier="fast", use_cache=False)
    assert isinstance(fresh.wait(timeout=60), EmbedResult)
    ids = {f"j{i}": job.id for i, job in enumerate(jobs)}
    placeholders = ", ".join(f":{name}" for name in ids)
    assert len(db(f"SELECT job_id FROM usage WHERE job_id IN ({placeholders})", **ids)) == len(jobs)
    succeeded = db(f"SELECT job_id FROM attempts WHERE status = 'succeeded' AND job_id IN ({placeholders})", **ids)
    assert len(succeeded) == len(jobs)  # one succeeded attempt each
    assert worker.alive()
