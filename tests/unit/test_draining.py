"""Dynamic batching on the in-memory broker: which waiting messages a take holds, what it gives back or refuses,
and a whole take run through the job path (SQLite, a scripted backend) and acknowledged."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from llm_router.broker.queues import TASK_NAMES
from llm_router.broker.transports import MemoryBroker, MemoryTransport, Taken, TaskMessage
from llm_router.tasks.records import JobStatus, Outcome
from llm_router.workers.draining import Drainer, sampled
from llm_router.workers.groups import run_jobs
from llm_router.workers.messages import parse_messages
from tests.unit.test_job_paths import make_cluster


def _send(broker: MemoryBroker, queue: str, kind: str = "embed", *, job_ids: list[str] | None = None) -> str:
    job_id = str(uuid.uuid4())
    args, kwargs = ([], {"job_ids": job_ids}) if job_ids else ([job_id], {})
    inputs = len(job_ids) if job_ids else 1
    MemoryTransport(broker).publish(TaskMessage(TASK_NAMES[kind], job_id, args, kwargs, queue, inputs, None))
    return job_id


def _raw(broker: MemoryBroker, queue: str, headers: dict[str, object], body: bytes, content_type: str) -> None:
    broker.put(Taken(f"raw-{uuid.uuid4()}", queue, headers, content_type, body, queue))


def test_a_take_holds_interactive_messages_first_until_acknowledged_or_given_back() -> None:
    broker = MemoryBroker()
    drainer = Drainer(lambda: MemoryTransport(broker), lines=2)
    bulk = _send(broker, "fast.bulk", job_ids=[str(uuid.uuid4()), str(uuid.uuid4())])
    interactive = [_send(broker, "fast", "classify") for _ in range(2)]
    take = drainer.take(["fast", "fast.bulk"], room=10, wait_ms=0)
    assert [(d.kind, d.task_id) for d in take.drained] == [("classify", i) for i in interactive] + [("embed", bulk)]
    assert len(broker.held) == 3  # taken, not acknowledged: a dead process's messages are still listed
    again = drainer.take(["fast"], room=10, wait_ms=0)  # the second line: nothing waits
    assert again.drained == [] and drainer.take(["fast"], room=10, wait_ms=0).drained == []  # no line free
    take.give_back()
    assert [m.headers["id"] for m in broker.waiting("fast")] == interactive and not broker.held
    again.ack()
    last = drainer.take(["fast", "fast.bulk"], room=2, wait_ms=0)  # a line is free again; room counts inputs
    assert [d.task_id for d in last.drained] == interactive
    last.ack()
    assert not broker.held and [m.headers["id"] for m in broker.waiting("fast.bulk")] == [bulk]


def test_what_must_not_run_now_is_given_back_and_what_is_not_json_refused() -> None:
    broker = MemoryBroker()
    later = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    _raw(
        broker,
        "fast",
        {"task": TASK_NAMES["embed"], "eta": later},
        json.dumps([["x"], {}, {}]).encode(),
        "application/json",
    )
    _raw(broker, "fast", {"task": "tasks.nope"}, json.dumps([["y"], {}, {}]).encode(), "application/json")
    _raw(
        broker,
        "fast",
        {"task": TASK_NAMES["embed"]},
        b"\x80\x04\x95\x00cos\nsystem\n.",
        "application/x-python-serialize",
    )
    runnable = _send(broker, "fast")
    take = Drainer(lambda: MemoryTransport(broker)).take(["fast"], room=10, wait_ms=0)
    assert [d.args for d in take.drained] == [(runnable,)]
    # The countdown and the unknown task are back first in line, for Celery; the pickle was acknowledged, unread.
    assert [m.headers["task"] for m in broker.waiting("fast")] == [TASK_NAMES["embed"], "tasks.nope"]
    assert [held.headers["id"] for _, _, held in broker.held.values()] == [runnable]  # only what runs is held
    take.ack()
    assert not broker.held


def test_a_take_runs_through_the_job_path_and_is_acknowledged_once_recorded(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, {})
    broker = MemoryBroker()
    job_ids = [cluster.submit({"kind": "embed", "input": [f"text {i}"], "use_cache": False}) for i in range(4)]
    for job_id in job_ids:
        MemoryTransport(broker).publish(TaskMessage(TASK_NAMES["embed"], job_id, [job_id], {}, "fast", 1, None))
    take = Drainer(lambda: MemoryTransport(broker)).take(["fast"], room=64, wait_ms=0)
    messages = [job for item in take.drained for job in parse_messages(item.args, item.kwargs)]
    outcomes = run_jobs(cluster.runtime, "embed", messages, "worker-1", cluster.reschedule)
    assert outcomes == [Outcome.SUCCEEDED] * 4 and cluster.backend.calls == [("e/a", 4)]  # one model call
    assert len(broker.held) == 4  # recorded, not yet acknowledged
    take.ack()
    assert not broker.held and not broker.waiting("fast")
    assert {cluster.runtime.store.status(job_id) for job_id in job_ids} == {JobStatus.SUCCEEDED}


def test_task_events_are_sent_for_a_sample_that_every_process_draws_alike() -> None:
    ids = [str(uuid.uuid4()) for _ in range(10_000)]
    quarter = [task_id for task_id in ids if sampled(task_id, 0.25)]
    assert 2_200 < len(quarter) < 2_800
    assert quarter == [task_id for task_id in ids if sampled(task_id, 0.25)]
    assert set(quarter) <= {task_id for task_id in ids if sampled(task_id, 0.5)}  # a larger share keeps these
    assert all(sampled(task_id, 1.0) for task_id in ids) and not any(sampled(task_id, 0.0) for task_id in ids)
