"""Idempotent submission: the same key within its time to live gets the same job, with one record and one
message, however many producers race on it (the unique index decides, not a read first)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import create_engine, text

from llm_router.broker.client import EnqueueFailed, Router
from llm_router.broker.settings import Settings
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.records import JobStatus
from tests.conftest import empty_redis_db, queued

BROKER = "redis://127.0.0.1:6379/4"  # no worker consumes here: the messages stay countable
PRODUCERS = 20


@pytest.fixture(scope="module")
def settings(cluster_settings: Settings) -> Settings:
    empty_redis_db(BROKER)
    return cluster_settings.model_copy(update={"broker_url": BROKER})


@pytest.fixture
def router(settings: Settings) -> Iterator[Router]:
    with Router(settings) as router:
        yield router


def _records(settings: Settings, key: str) -> int:
    engine = create_engine(str(settings.database_url))
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM jobs WHERE idempotency_key = :k"), {"k": key}).scalar()
    engine.dispose()
    return int(count or 0)


def test_twenty_producers_racing_on_one_key_record_one_job_and_send_one_message(settings: Settings) -> None:
    key = f"order-{uuid.uuid4()}"
    broker = redis.Redis.from_url(BROKER)
    before = queued(broker, "fast")
    routers = [Router(settings) for _ in range(PRODUCERS)]
    for router in routers:
        router.app  # noqa: B018 - connect before the race, so the threads start their submissions together
    barrier = threading.Barrier(PRODUCERS)
    job_ids: list[str] = []

    def submit(router: Router) -> None:
        barrier.wait()
        job_ids.append(router.embed("the same text", tier="fast", idempotency_key=key).id)

    threads = [threading.Thread(target=submit, args=(router,)) for router in routers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for router in routers:
        router.close()
    assert len(job_ids) == PRODUCERS and len(set(job_ids)) == 1
    assert _records(settings, key) == 1
    assert queued(broker, "fast") - before == 1


def test_a_key_names_one_request(router: Router) -> None:
    key = f"order-{uuid.uuid4()}"
    first = router.embed("one text", tier="fast", idempotency_key=key)
    assert router.embed("one text", tier="fast", idempotency_key=key).id == first.id
    with pytest.raises(InvalidRequest, match=r"idempotency_key: .* another request") as refused:
        router.embed("another text", tier="fast", idempotency_key=key)
    assert refused.value.field == "idempotency_key"


def test_a_key_past_its_time_to_live_starts_a_new_job(settings: Settings) -> None:
    key = f"order-{uuid.uuid4()}"
    with Router(settings.model_copy(update={"idempotency_ttl_s": 1.0})) as router:
        first = router.embed("one text", tier="fast", idempotency_key=key)
        time.sleep(1.2)
        second = router.embed("one text", tier="fast", idempotency_key=key)
    assert second.id != first.id and _records(settings, key) == 1  # the key moved to the new job


@pytest.mark.parametrize(("key", "why"), [("", "1 to 200"), ("k" * 201, "1 to 200"), (42, "1 to 200")])
def test_a_bad_key_is_refused_by_name(router: Router, key: object, why: str) -> None:
    with pytest.raises(InvalidRequest, match=f"idempotency_key: expected a string of {why} characters"):
        router.submit({"kind": "embed", "input": "x", "tier": "fast", "idempotency_key": key})


def test_a_batch_submitted_again_with_its_key_is_the_same_batch(router: Router) -> None:
    key = f"nightly-{uuid.uuid4()}"
    requests = [{"kind": "embed", "input": f"line {i}", "tier": "fast"} for i in range(5)]
    first = router.batch(requests, idempotency_key=key)
    again = router.batch(requests, idempotency_key=key)
    assert first.inserted == 5 and again.inserted == 0 and again.batch_id == first.batch_id
    assert [job.id for job in again.jobs.values()] == [job.id for job in first.jobs.values()]


def test_a_keyed_submission_the_broker_refused_is_sent_when_submitted_again(settings: Settings) -> None:
    """A web backend retries a request that failed because the broker was down: with the same key, the job
    recorded then is sent now, once; nothing is recorded twice."""
    key = f"order-{uuid.uuid4()}"
    broker = redis.Redis.from_url(BROKER)
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})  # nothing listens there
    with Router(down) as router, pytest.raises(EnqueueFailed):
        router.embed("sent later", tier="fast", idempotency_key=key)
    with Router(settings) as router:
        before = queued(broker, "fast")
        job = router.embed("sent later", tier="fast", idempotency_key=key)
        assert job.record().status == JobStatus.QUEUED and job.record().error is None
        again = router.embed("sent later", tier="fast", idempotency_key=key)
    assert again.id == job.id and _records(settings, key) == 1
    assert queued(broker, "fast") - before == 1  # sent by the first retry only
