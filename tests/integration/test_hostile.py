"""Defects a hostile user found, each on the real Redis, Postgres and workers: a lost rate-limit store, a
duplicate message of a live job, requeues of jobs that only wait, a cache that never expired."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.tasks.database import make_engine
from llm_router.tasks.records import utcnow
from llm_router.tasks.schemas import Embedding, EmbedResult, Usage
from llm_router.tasks.store import JobStore, NewJob
from tests.conftest import WorkerProcess, empty_redis_db
from tests.support.store import start_one, submit_one, succeed_one

BROKER = "redis://127.0.0.1:6379/5"
CATALOGUE = """
default_tier = "fast"
tier_order = ["fast", "limited"]
[tiers.fast]
generate = ["HuggingFaceTB/SmolLM2-135M-Instruct"]
embed = ["sentence-transformers/all-MiniLM-L6-v2"]
[tiers.limited]
requests_per_minute = 1
generate = ["echo/limited"]
[models."echo/limited"]
provider = "echo"
[models."HuggingFaceTB/SmolLM2-135M-Instruct"]
dtype = "bfloat16"
"""


@pytest.fixture(scope="module")
def env(cluster_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    empty_redis_db(BROKER)
    config = tmp_path_factory.mktemp("hostile") / "catalogue.toml"
    config.write_text(CATALOGUE)
    return {**cluster_env, "LLM_ROUTER_BROKER_URL": BROKER, "LLM_ROUTER_CONFIG": str(config)}


@pytest.fixture(scope="module")
def router(cluster_settings: Settings, env: dict[str, str]) -> Iterator[Router]:
    settings = cluster_settings.model_copy(update={"broker_url": BROKER, "config": Path(env["LLM_ROUTER_CONFIG"])})
    with Router(settings) as router:
        yield router


def _attempts(pg_url: str, job_id: str) -> list[dict[str, Any]]:
    engine = create_engine(pg_url)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT status, error FROM attempts WHERE job_id = :id ORDER BY number"), {"id": job_id}
        )
        found = [dict(row._mapping) for row in rows]
    engine.dispose()
    return found


def test_an_unreachable_rate_limit_store_hands_the_message_back(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router, pg_url: str
) -> None:
    blind = start_worker("fast", "no-redis", env={**env, "LLM_ROUTER_REDIS_URL": "redis://127.0.0.1:1/0"})
    job = router.embed("wait for the store", use_cache=False)
    deadline = time.monotonic() + 60
    while "rate-limit store unavailable" not in blind.log():
        assert time.monotonic() < deadline, blind.log()[-2000:]
        time.sleep(0.2)
    assert job.status() == "queued" and blind.alive()
    blind.stop()
    healthy = start_worker("fast", "with-redis", env=env)  # the message was kept: the job now runs
    assert isinstance(job.wait(timeout=60), EmbedResult)
    healthy.stop()


def test_a_live_job_is_never_run_twice(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router, pg_url: str
) -> None:
    worker = start_worker("fast", "two-slots", env=env, options=("--concurrency", "2"))
    long = {"max_tokens": 160, "temperature": 0.0, "repetition_penalty": 1.3, "use_cache": False}
    story = [{"role": "user", "content": "Write a long story about a lighthouse keeper and her cat."}]
    job = router.generate(messages=story, **long)
    deadline = time.monotonic() + 60
    while job.status() != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.5)
    # A requeue while it runs finds nothing stale; a duplicate message (a batch resumed at once) is put off.
    assert job.id not in {stale.id for stale in router.requeue_stale(1.0).requeued}
    router.submitter.publish(job.id, "generate", "fast", 1)
    job.wait(timeout=120)
    assert [a["status"] for a in _attempts(pg_url, job.id)] == ["succeeded"]
    assert "its message is put off" in worker.log()
    assert job.result().usage.completion_tokens > 20  # type: ignore[union-attr]  # it was running meanwhile
    worker.stop()


def test_requeue_leaves_jobs_that_wait_for_a_rate_limit(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router, pg_url: str
) -> None:
    worker = start_worker("limited", "limited", env=env)
    jobs = [router.generate(f"limited {i}", tier="limited", use_cache=False) for i in range(4)]
    deadline = time.monotonic() + 30
    while "deferred" not in worker.log():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(3.5)
    ids = {job.id for job in jobs}
    assert not ids & {stale.id for stale in router.requeue_stale(3.0).requeued}  # they wait; none is lost
    assert sum(job.status() == "succeeded" for job in jobs) == 1
    worker.stop()


def test_requeue_reports_a_lost_job_whose_tier_the_catalogue_no_longer_has(router: Router) -> None:
    orphan, kept = str(uuid.uuid4()), str(uuid.uuid4())
    submit_one(router.store, job_id=orphan, kind="embed", request={"input": ["x"]}, tier="retired", queue="retired")
    submit_one(router.store, job_id=kept, kind="embed", request={"input": ["y"]}, tier="fast", queue="fast")
    time.sleep(1.2)
    outcome = router.requeue_stale(1.0)  # publishes what a worker can take, reports the rest, raises nothing
    assert orphan in {job.id for job in outcome.unroutable} and orphan not in {job.id for job in outcome.requeued}
    assert kept in {job.id for job in outcome.requeued}
    again = router.requeue_stale(1.0)  # the one published is due now; the orphan is still reported
    assert kept not in {job.id for job in again.requeued} and orphan in {job.id for job in again.unroutable}


def test_a_cache_entry_expires_ttl_after_its_answer_was_computed(pg_url: str) -> None:
    store = JobStore(make_engine(pg_url))
    key = f"ttl-{uuid.uuid4().hex}"
    computed = str(uuid.uuid4())
    submit_one(store, job_id=computed, kind="embed", request={"input": ["x"]}, tier="fast", queue="fast", cache_key=key)
    number = start_one(store, computed, model="m", provider="local", tier="fast", worker="w", lease=_lease())
    assert isinstance(number, int)
    result = EmbedResult(data=[Embedding(index=0, embedding=[1.0])], model="m", tier="fast", usage=Usage())
    succeed_one(store, computed, number, result=result, provider="local", model_latency_ms=1.0)
    _age(pg_url, computed, seconds=3)
    source = store.find_cached(key, max_age_s=4)
    assert source is not None and source.id == computed
    hit = str(uuid.uuid4())  # a hit 3 s after the answer was computed: its row is new, its answer is not
    store.record_answered(NewJob(hit, "embed", {"input": ["x"]}, "fast", "fast", key), source)
    _age(pg_url, computed, seconds=5)
    assert store.find_cached(key, max_age_s=4) is None  # 5 s after computing: expired, whatever hits since
    store.engine.dispose()


def _lease() -> Any:
    from llm_router.workers.leases import lease_for_this_process

    return lease_for_this_process(30.0)


def _age(pg_url: str, job_id: str, *, seconds: float) -> None:
    engine = create_engine(pg_url)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE jobs SET finished_at = :t WHERE id = :id"),
            {"t": utcnow() - timedelta(seconds=seconds), "id": job_id},
        )
    engine.dispose()
