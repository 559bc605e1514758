"""The whole path on the real services: Router → broker queues → real worker subprocesses → Postgres, on Redis
and on RabbitMQ."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.tasks.errors import JobRejected
from llm_router.tasks.schemas import ClassifyResult, EmbedResult, GenerateResult
from tests.conftest import ON_BOTH_BROKERS, WorkerProcess, producer_settings, publish_raw, second_run
from tests.support.brokers import BrokerQueues

pytestmark = ON_BOTH_BROKERS


@pytest.fixture(scope="module")
def broker(request: pytest.FixtureRequest, redis_url: str, rabbit_vhost: Callable[[str], str]) -> str:
    return redis_url if request.param == "redis" else rabbit_vhost("cluster")


@pytest.fixture(scope="module")
def workers(
    start_worker: Callable[..., WorkerProcess], cluster_env: dict[str, str], broker: str, redis_url: str
) -> dict[str, WorkerProcess]:
    env = {**cluster_env, "LLM_ROUTER_BROKER_URL": broker, **second_run(broker)}
    suffix = "" if broker == redis_url else "-rabbit"
    return {tier: start_worker(tier, f"{tier}{suffix}", env=env) for tier in ("fast", "balanced")}


@pytest.fixture(scope="module")
def router(cluster_settings: Settings, broker: str) -> Iterator[Router]:
    with Router(producer_settings(cluster_settings, broker)) as router:
        yield router


@pytest.fixture(scope="module")
def db(pg_url: str) -> Iterator[Callable[..., list[dict[str, Any]]]]:
    engine = create_engine(pg_url)

    def rows(sql: str, **params: Any) -> list[dict[str, Any]]:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(sql), params)]

    yield rows
    engine.dispose()


def test_all_three_kinds_succeed_and_are_recorded(
    workers: dict[str, WorkerProcess], router: Router, db: Callable[..., list[dict[str, Any]]]
) -> None:
    chat = router.generate(
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        tier="fast",
        temperature=0.0,
        max_tokens=30,
    )
    at_once = chat.status()  # submitting only records and publishes: the model has not answered yet
    vectors = router.embed(["A man is playing a guitar.", "Someone is strumming a guitar."], tier="fast")
    labels = router.classify("I love this!", tier="fast")
    assert at_once in ("queued", "running")

    generated = chat.wait(timeout=120)
    assert isinstance(generated, GenerateResult) and "Paris" in generated.text
    assert generated.model == "HuggingFaceTB/SmolLM2-135M-Instruct" and generated.tier == "fast"
    embedded = vectors.wait(timeout=60)
    assert isinstance(embedded, EmbedResult) and len(embedded.data) == 2 and len(embedded.data[0].embedding) == 384
    classified = labels.wait(timeout=60)
    assert isinstance(classified, ClassifyResult) and classified.labels[0].label == "POSITIVE"

    for job, kind in ((chat, "generate"), (vectors, "embed"), (labels, "classify")):
        (row,) = db("SELECT * FROM jobs WHERE id = :id", id=job.id)
        assert row["status"] == "succeeded" and row["kind"] == kind and row["tier"] == "fast"
        assert row["model_used"] and row["latency_ms"] > 0 and row["attempts"] == 1
        assert row["started_at"] <= row["finished_at"] and row["result"]["model"] == row["model_used"]
        (attempt,) = db("SELECT * FROM attempts WHERE job_id = :id", id=job.id)
        assert attempt["status"] == "succeeded" and attempt["worker"] == workers["fast"].nodename
        assert attempt["model"] == row["model_used"] and attempt["latency_ms"] > 0
        (usage,) = db("SELECT * FROM usage WHERE job_id = :id", id=job.id)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
        assert usage["total_tokens"] == attempt["total_tokens"]
    (usage,) = db("SELECT * FROM usage WHERE job_id = :id", id=chat.id)
    assert usage["completion_tokens"] == generated.usage.completion_tokens > 0


def test_a_tier_job_is_consumed_only_by_workers_of_that_queue(
    workers: dict[str, WorkerProcess], router: Router, db: Callable[..., list[dict[str, Any]]], broker: str
) -> None:
    fast = [router.embed(f"fast sentence {i}", tier="fast") for i in range(3)]
    balanced = [router.embed(f"balanced sentence {i}", tier="balanced") for i in range(3)]
    orphan = router.embed("nobody serves the quality queue in this test", tier="quality")
    for job in fast + balanced:
        job.wait(timeout=60)
    for jobs, worker in ((fast, workers["fast"]), (balanced, workers["balanced"])):
        for job in jobs:
            (attempt,) = db("SELECT worker FROM attempts WHERE job_id = :id", id=job.id)
            assert attempt["worker"] == worker.nodename
    assert orphan.status() == "queued"
    queues = BrokerQueues(broker)
    assert queues.count("quality") == 1
    queues.purge("quality")


def test_malformed_messages_are_recorded_and_the_worker_keeps_serving(
    workers: dict[str, WorkerProcess], router: Router, db: Callable[..., list[dict[str, Any]]], broker: str
) -> None:
    app = router.app
    bad_request, extra_args, unknown_id = (str(uuid.uuid4()) for _ in range(3))
    # These go under the task names of before the package was llm_router: such messages still run.
    # A hand-written producer's job with an invalid request: recorded rejected under its own id.
    app.send_task("tasks.generate", kwargs={"job_id": bad_request, "request": {"prompt": ""}}, queue="fast")
    # Too many arguments, but a usable id.
    app.send_task("tasks.embed", args=[extra_args, "surplus"], queue="fast")
    # An id that names no stored job and carries no request.
    app.send_task("tasks.classify", args=[unknown_id], queue="fast")
    # No usable id: logged and dropped.
    app.send_task("tasks.classify", args=["not-a-uuid"], queue="fast")
    # An unknown task name, a pickle payload, and a body that is not JSON.
    app.send_task("tasks.nope", args=[str(uuid.uuid4())], queue="fast")
    publish_raw(broker, "fast", b"\x80\x04\x95\x00cos\nsystem\n.", "application/x-python-serialize", "tasks.generate")
    publish_raw(broker, "fast", b"{not json", "application/json", "tasks.generate")

    after = router.embed("the worker still serves", tier="fast").wait(timeout=60)
    assert isinstance(after, EmbedResult)
    assert workers["fast"].alive()

    expectations = {bad_request: "prompt", extra_args: "unexpected arguments", unknown_id: "no job"}
    for job_id, words in expectations.items():
        (row,) = db("SELECT status, error FROM jobs WHERE id = :id", id=job_id)
        assert row["status"] == "rejected" and words in row["error"], row
    with pytest.raises(JobRejected, match="prompt"):
        router.get(bad_request).wait(timeout=1)
    # A message that dynamic batching took aside (not one of our tasks) goes back to the queue for Celery,
    # which may meet it after the job above: its report can come a moment later.
    deadline = time.monotonic() + 15
    while "tasks.nope" not in workers["fast"].log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = workers["fast"].log()
    assert "names no job" in log
    assert "tasks.nope" in log  # Celery reports the unregistered task and discards it
    assert "untrusted content" in log.lower() or "refusing" in log.lower()  # pickle is refused


def test_stored_jobs_keep_their_request_out_of_the_message(router: Router, broker: str) -> None:
    # Messages carry only the job id: prompts never reach the broker (or Flower's task arguments).
    queues = BrokerQueues(broker)
    queues.purge("quality")
    job = router.generate("a secret prompt that must stay in the database", tier="quality")
    (message,) = queues.take("quality")
    assert b"secret prompt" not in message.raw
    assert message.headers["id"] == job.id and message.content_type == "application/json"
