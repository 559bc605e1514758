"""The dynamic-batching accumulator on the real Redis: which waiting messages it takes, in which order, and
what it does with those it must not run now."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import redis

from llm_router.broker.celery_app import RouterCelery, create_app
from llm_router.broker.queues import INPUTS_HEADER, redis_lists
from llm_router.broker.settings import Settings
from llm_router.broker.transports import open_transport
from llm_router.workers.draining import Drainer, report
from tests.conftest import empty_redis_db, publish_raw, queued, queued_raw

BROKER = "redis://127.0.0.1:6379/4"


@pytest.fixture
def app(cluster_settings: Settings) -> Iterator[RouterCelery]:
    empty_redis_db(BROKER)
    app = create_app(cluster_settings.model_copy(update={"broker_url": BROKER}))
    yield app
    app.close()


def _ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def test_it_takes_interactive_messages_first_and_counts_jobs(app: RouterCelery) -> None:
    bulk, interactive = _ids(3), _ids(2)
    app.send_task("tasks.embed", kwargs={"job_ids": bulk}, queue="fast.bulk", routing_key="fast.bulk")
    for job_id in interactive:
        app.send_task("tasks.classify", args=[job_id], queue="fast", routing_key="fast")
    drainer = Drainer(partial(open_transport, app), lines=2)
    take = drainer.take(["fast", "fast.bulk"], room=10, wait_ms=0)
    assert [(d.kind, d.args, d.kwargs) for d in take.drained] == [
        ("classify", (interactive[0],), {}),
        ("classify", (interactive[1],), {}),
        ("embed", (), {"job_ids": bulk}),
    ]
    client = redis.Redis.from_url(BROKER)
    assert client.hlen("unacked") == 3  # taken, not acknowledged: a dead process's messages come back
    take.ack()
    assert client.hlen("unacked") == 0

    for job_id in _ids(5):
        app.send_task("tasks.embed", args=[job_id], queue="fast", routing_key="fast")
    first = drainer.take(["fast"], room=2, wait_ms=0)
    assert len(first.drained) == 2  # room counts inputs: one per message here
    again = drainer.take(["fast"], room=64, wait_ms=0)  # the second connection: two takes held at once
    assert len(again.drained) == 3
    assert drainer.take(["fast"], room=64, wait_ms=0).drained == []  # no connection free: the message runs alone
    again.give_back()
    assert queued(client, "fast") == 3
    first.ack()
    client.delete("fast")

    # Producers put each message's input count in a header: three messages of 40 inputs fill a room of 64
    # with two (a message is never split), and leave the third waiting.
    for job_id in _ids(3):
        app.send_task("tasks.embed", args=[job_id], queue="fast", routing_key="fast", headers={INPUTS_HEADER: 40})
    last = drainer.take(["fast"], room=64, wait_ms=0)
    assert len(last.drained) == 2
    assert queued(client, "fast") == 1
    last.ack()


def test_what_it_must_not_run_now_is_given_back_or_refused(app: RouterCelery) -> None:
    later, runnable = _ids(2)
    app.send_task("tasks.embed", args=[later], countdown=600, queue="fast", routing_key="fast")
    app.send_task("tasks.nope", args=[str(uuid.uuid4())], queue="fast", routing_key="fast")
    publish_raw(BROKER, "fast", b"\x80\x04\x95\x00cos\nsystem\n.", "application/x-python-serialize", "tasks.embed")
    app.send_task("tasks.embed", args=[runnable], queue="fast", routing_key="fast")

    take = Drainer(partial(open_transport, app)).take(["fast"], room=10, wait_ms=0)
    assert [d.args for d in take.drained] == [(runnable,)]
    client = redis.Redis.from_url(BROKER)
    assert client.hlen("unacked") == 1  # the runnable one; the pickle was refused and acknowledged, never decoded
    waiting = [json.loads(raw) for raw in queued_raw(client, "fast")]
    names = sorted(m["headers"]["task"] for m in waiting)
    assert names == ["tasks.embed", "tasks.nope"]  # the unknown task and the countdown given back
    (republished,) = [m for m in waiting if m["headers"]["task"] == "tasks.embed"]
    assert republished["headers"]["eta"] is not None  # still due in ten minutes, for Celery to hold
    take.ack()
    assert client.hlen("unacked") == 0


def test_a_take_is_acknowledged_and_reported_to_monitors_in_one_message(app: RouterCelery) -> None:
    """Redis: the jobs of a take are acknowledged together, and Flower's receivers get every drained task's
    received and succeeded events (one ``task.multi`` message, which Celery's receivers read as a list)."""
    ids = _ids(3)
    for job_id in ids:
        app.send_task("tasks.classify", args=[job_id], queue="fast", routing_key="fast")
    drainer = Drainer(partial(open_transport, app))
    take = drainer.take(["fast"], room=10, wait_ms=0)
    taken = take.drained
    client = redis.Redis.from_url(BROKER)
    assert client.hlen("unacked") == 3 and client.zcard("unacked_index") == 3
    take.ack()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0

    heard: list[dict[str, Any]] = []
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": heard.append})
        listening = threading.Thread(target=lambda: receiver.capture(limit=6, timeout=10, wakeup=False))
        listening.start()
        time.sleep(0.5)  # subscribed before the events go out (Redis fans out to whoever listens now)
        report(app, taken, "drainer@test", "succeeded", 0.01)
        listening.join(timeout=15)
    assert sorted((e["type"], e["uuid"]) for e in heard) == sorted(
        (kind, item.task_id) for item in taken for kind in ("task-received", "task-succeeded")
    )
    assert sorted(item.args[0] for item in taken) == sorted(ids)
    assert {e["name"] for e in heard if e["type"] == "task-received"} == {"tasks.classify"}


def test_a_take_of_some_tasks_stops_at_the_first_other_message(app: RouterCelery) -> None:
    """The remote pool batches embed and classify jobs into one HTTP call, never generations: a take limited to
    those tasks leaves a generation where it was, first in line for Celery's consumer, and what waits behind
    it; on another queue it goes on."""
    embeds, generation, behind, other_queue = _ids(2), _ids(1), _ids(1), _ids(1)
    for job_id in embeds:
        app.send_task("tasks.embed", args=[job_id], queue="fast", routing_key="fast")
    app.send_task("tasks.generate", args=generation, queue="fast", routing_key="fast")
    app.send_task("tasks.embed", args=behind, queue="fast", routing_key="fast")
    app.send_task("tasks.classify", args=other_queue, queue="fast.bulk", routing_key="fast.bulk")
    only = frozenset({"tasks.embed", "tasks.classify"})
    take = Drainer(partial(open_transport, app)).take(["fast", "fast.bulk"], room=10, wait_ms=0, tasks=only)
    assert [d.args[0] for d in take.drained] == [*embeds, *other_queue]
    client = redis.Redis.from_url(BROKER)
    # kombu pushes on the left and pops on the right: the right end is the head of the line (messages sent
    # with no priority are on the queue's first list)
    waiting = [json.loads(raw)["headers"]["task"] for raw in reversed(client.lrange(redis_lists("fast")[0], 0, -1))]
    assert waiting == ["tasks.generate", "tasks.embed"]
    assert client.hlen("unacked") == 3
    take.ack()
    assert client.hlen("unacked") == 0
