"""A job's message published on Redis in one round trip is, byte for byte after decoding, the message Celery's
``send_task`` writes through kombu, on the list of the same priority step (real Redis)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from llm_router.broker.celery_app import create_app
from llm_router.broker.publishing import broker_priority, send_bulk, send_job
from llm_router.broker.queues import INPUTS_HEADER, TASK_NAMES, redis_lists
from llm_router.broker.settings import Settings
from tests.conftest import empty_redis_db

BROKER = "redis://127.0.0.1:6379/12"  # no worker consumes here (test_bad_input's quiet broker): the lists are counted


def decoded(raw: bytes) -> dict[str, Any]:
    """A stored message with its body decoded and its delivery tag (a fresh uuid each) set aside."""
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    assert message["properties"].pop("delivery_tag")
    return message


@pytest.mark.parametrize(
    ("queue", "priority"), [("fast", None), ("fast", 8), ("fast.bulk", None)], ids=["default", "urgent", "bulk"]
)
def test_a_message_published_directly_is_the_message_send_task_writes(queue: str, priority: int | None) -> None:
    url = empty_redis_db(BROKER)
    app = create_app(Settings(broker_url=url))
    client = redis.Redis.from_url(url)
    try:
        assert app.publisher is not None
        send_job(app, "job-1", "embed", queue, 5, priority=priority)  # the direct way
        step = broker_priority(app, priority, queue) or 0
        app.send_task(  # Celery's way, as send_job went before
            TASK_NAMES["embed"],
            args=["job-1"],
            task_id="job-1",
            queue=queue,
            routing_key=queue,
            headers={INPUTS_HEADER: 5},
            priority=step,
        )
        lists = [name for name in redis_lists(queue) if client.llen(name)]
        assert lists == [redis_lists(queue)[step]], "both on the list of the job's priority step"
        direct, celery = (decoded(raw) for raw in client.lrange(lists[0], 0, -1)[::-1])
        assert direct == celery
        assert direct["headers"]["task"] == "llm_router.embed" and direct["body"][0] == ["job-1"]
    finally:
        app.close()
        client.close()


def test_a_bulk_message_published_directly_is_the_message_send_task_writes() -> None:
    url = empty_redis_db(BROKER)
    app = create_app(Settings(broker_url=url))
    client = redis.Redis.from_url(url)
    try:
        job_ids = ["job-a", "job-b", "job-c"]
        send_bulk(app, job_ids, "classify", "fast.bulk", 7)
        app.send_task(
            TASK_NAMES["classify"],
            kwargs={"job_ids": job_ids},
            task_id="job-a+2",
            queue="fast.bulk",
            routing_key="fast.bulk",
            headers={INPUTS_HEADER: 7},
            priority=broker_priority(app, None, "fast.bulk"),
        )
        (name,) = [name for name in redis_lists("fast.bulk") if client.llen(name)]
        direct, celery = (decoded(raw) for raw in client.lrange(name, 0, -1)[::-1])
        assert direct == celery
        assert direct["body"][:2] == [[], {"job_ids": job_ids}] and direct["headers"]["id"] == "job-a+2"
    finally:
        app.close()
        client.close()


def test_a_countdown_or_another_broker_goes_through_send_task(tmp_path: Any) -> None:
    url = empty_redis_db(BROKER)
    app = create_app(Settings(broker_url=url))
    client = redis.Redis.from_url(url)
    try:
        send_job(app, "job-2", "generate", "fast", 1, countdown=30)
        # Celery holds a message with an ETA in the worker; on Redis it waits on its list like any other.
        (raw,) = [raw for name in redis_lists("fast") for raw in client.lrange(name, 0, -1)]
        assert decoded(raw)["headers"]["eta"] is not None
    finally:
        app.close()
        client.close()
    embedded = create_app(Settings(var_dir=tmp_path))
    assert embedded.publisher is None
    embedded.close()
