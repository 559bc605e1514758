"""What every transport does, checked the same way on each (the in-memory one, the embedded filesystem broker,
Redis, RabbitMQ): publish, take many in order, count inputs, take only some tasks, acknowledge, give back first
in line, list and drop held messages."""

from __future__ import annotations

import time
import uuid

from llm_router.broker.queues import TASK_NAMES
from llm_router.broker.transports import Taken, TaskMessage, Transport


def message(queue: str, *, kind: str = "embed", inputs: int = 1, bulk: list[str] | None = None) -> TaskMessage:
    job_id = str(uuid.uuid4())
    if bulk is not None:
        return TaskMessage(TASK_NAMES[kind], f"{bulk[0]}+{len(bulk) - 1}", [], {"job_ids": bulk}, queue, inputs, None)
    return TaskMessage(TASK_NAMES[kind], job_id, [job_id], {}, queue, inputs, None)


def take_all(transport: Transport, queues: list[str], room: int, tasks: frozenset[str] | None = None) -> list[Taken]:
    """Take as the worker does: again and again while the transport answers and room is left."""
    taken: list[Taken] = []
    inputs = 0
    for _ in range(room):
        got = transport.take(queues, room - inputs, tasks)
        taken += got
        inputs += sum(int(m.headers.get("llm_router_inputs", 1)) for m in got)
        if not got or inputs >= room or (transport.takes_many and got):
            break
    return taken


def ids(taken: list[Taken]) -> list[str]:
    bodies = [m.json_body() for m in taken]
    return [body[0][0] if body[0] else body[1]["job_ids"][0] for body in bodies]


def check_publish_take_and_ack(transport: Transport, held_listed: bool) -> None:
    interactive = [message("fast") for _ in range(3)]
    bulk = message("fast.bulk", bulk=[str(uuid.uuid4()), str(uuid.uuid4())], inputs=2)
    for each in [bulk, *interactive]:
        transport.publish(each)
    taken = take_all(transport, ["fast", "fast.bulk"], room=10)
    # Interactive first, in the order sent; every message's JSON body and task header as published.
    assert ids(taken) == [m.task_id for m in interactive] + [bulk.kwargs["job_ids"][0]]
    assert [m.task for m in taken] == [TASK_NAMES["embed"]] * 4 and [m.queue for m in taken][-1] == "fast.bulk"
    assert taken[-1].json_body()[1] == {"job_ids": bulk.kwargs["job_ids"]}
    assert transport.empty("fast") and transport.empty("fast.bulk")
    held = {m.tag for m in transport.held_since(time.time() + 1)}
    assert held == ({m.tag for m in taken} if held_listed else set())
    transport.ack(taken)
    assert transport.held_since(time.time() + 1) == []
    assert take_all(transport, ["fast", "fast.bulk"], room=10) == []


def check_room_counts_inputs(transport: Transport) -> None:
    # Three messages of 40 inputs fill a room of 64 with two (a message is never split); the third waits.
    for _ in range(3):
        transport.publish(message("fast", inputs=40))
    taken = take_all(transport, ["fast"], room=64)
    assert len(taken) == 2 and not transport.empty("fast")
    rest = take_all(transport, ["fast"], room=64)
    assert len(rest) == 1
    transport.ack(taken + rest)


def check_give_back_first_in_line(transport: Transport) -> None:
    sent = [message("fast") for _ in range(4)]
    for each in sent:
        transport.publish(each)
    first = take_all(transport, ["fast"], room=2)
    assert ids(first) == [m.task_id for m in sent[:2]]
    transport.give_back(first)
    again = take_all(transport, ["fast"], room=10)
    assert ids(again) == [m.task_id for m in sent]  # given back first in line, in their order
    transport.ack(again)
    assert transport.empty("fast")


def check_only_some_tasks(transport: Transport) -> None:
    # A take limited to some tasks stops at the first other message, which stays first in line; on another
    # queue it goes on.
    embeds, generation, behind = [message("fast") for _ in range(2)], message("fast", kind="generate"), message("fast")
    other_queue = message("fast.bulk", kind="classify")
    for each in [*embeds, generation, behind, other_queue]:
        transport.publish(each)
    only = frozenset({TASK_NAMES["embed"], TASK_NAMES["classify"]})
    taken = take_all(transport, ["fast"], room=10, tasks=only)
    taken += take_all(transport, ["fast.bulk"], room=10, tasks=only)
    assert ids(taken) == [m.task_id for m in embeds] + [other_queue.task_id]
    rest = take_all(transport, ["fast"], room=10)
    assert ids(rest) == [generation.task_id, behind.task_id]
    transport.ack(taken + rest)


def check_a_dropped_held_message_is_not_given_back(transport: Transport) -> None:
    """What the sweeper does with a message held by a dead worker: its jobs are published again and the held
    copy dropped, so that the holder, alive after all, cannot put a second copy back."""
    sent = message("fast")
    transport.publish(sent)
    (taken,) = take_all(transport, ["fast"], room=1)
    (held,) = transport.held_since(time.time() + 1)
    assert held.tag == taken.tag and held.json_body()[0] == [sent.task_id]
    transport.drop_held([held.tag])
    transport.give_back([taken])
    assert transport.empty("fast") and transport.held_since(time.time() + 1) == []


class TransportContract:
    """The contract as tests: a module subclasses it and gives a ``transport`` fixture (and says whether that
    transport lists held messages)."""

    lists_held: bool

    def test_publish_take_and_ack(self, transport: Transport) -> None:
        check_publish_take_and_ack(transport, held_listed=self.lists_held)

    def test_room_counts_inputs(self, transport: Transport) -> None:
        check_room_counts_inputs(transport)

    def test_given_back_first_in_line(self, transport: Transport) -> None:
        check_give_back_first_in_line(transport)

    def test_a_take_of_some_tasks_stops_at_the_first_other_message(self, transport: Transport) -> None:
        check_only_some_tasks(transport)

    def test_a_dropped_held_message_is_not_given_back(self, transport: Transport) -> None:
        if self.lists_held:
            check_a_dropped_held_message_is_not_given_back(transport)
        else:  # nothing is listed, so nothing can be dropped: a message given back is first in line again
            check_give_back_first_in_line(transport)
