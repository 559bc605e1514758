"""Taking waiting messages straight from the worker's queues, so that jobs which wait at the same time run
through the model together (dynamic batching).

Celery hands a worker process one message at a time. When that message holds an embed or classify job, the
process also takes the messages already waiting in its own queues (interactive lanes first), up to the
pool's ``max_batch`` and for at most ``max_wait_ms``. They are taken unacknowledged: they are acknowledged
only once their jobs are recorded, given back if the work fails, and handed out again by the broker's
visibility timeout if the process dies.

A message that is not due yet (a retry's countdown) and a message of a task this project does not know are
given back untouched, for Celery's own consumer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from llm_router.broker.queues import INPUTS_HEADER, KIND_OF_TASK, TASK_NAMES
from llm_router.broker.transports import Taken, Transport

log = logging.getLogger(__name__)


@dataclass
class Drained:
    kind: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    task_id: str | None
    taken: Taken
    name: str = ""  # the task name the message carried (a former one, from an older producer, included)


def inputs_of(headers: dict[str, Any]) -> int:
    count = headers.get(INPUTS_HEADER)
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1


def _runnable_now(headers: dict[str, Any]) -> bool:
    """One of our tasks, and due: a retry's countdown is left to Celery, which holds it until its ETA."""
    return KIND_OF_TASK.get(headers.get("task") or "") is not None and seconds_until_due(headers) <= 0


def seconds_until_due(headers: dict[str, Any], now: datetime | None = None) -> float:
    """How long a message waits for its ETA (a retry's countdown); 0 when due, or when it names none. An ETA
    that cannot be read is treated as due: the job is run rather than held for ever."""
    eta = headers.get("eta")
    if not eta:
        return 0.0
    try:
        due = datetime.fromisoformat(eta).astimezone(UTC)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, (due - (now or datetime.now(UTC))).total_seconds())


def task_body(message: Taken) -> tuple[list[Any], dict[str, Any]] | None:
    """A task message's arguments, or None when it is not a JSON task message. JSON only, checked before
    decoding: kombu would decode any serializer (pickle included)."""
    body = message.json_body()
    if isinstance(body, list) and len(body) == 3 and isinstance(body[0], list) and isinstance(body[1], dict):
        return body[0], body[1]
    return None


class _Line:
    """One broker connection for taking messages, used by one thread at a time, opened on first use (after
    the fork)."""

    def __init__(self, connect: Callable[[], Transport]):
        self._connect = connect
        self._transport: Transport | None = None

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = self._connect()
        return self._transport

    def settle(self, taken: list[Taken], how: str) -> None:
        """Acknowledge or give back taken messages. A broker connection lost meanwhile has already handed them
        back (or the sweeper will); their redelivery finds their jobs final and is ignored, so this only logs."""
        if not taken:
            return
        try:
            getattr(self.transport, how)(taken)
        except Exception as exc:  # the transports raise many kinds; all mean "the connection is gone"
            log.warning(
                "could not %s %d drained messages (%s); the broker hands them out again",
                how.replace("_", " "),
                len(taken),
                type(exc).__name__,
            )
            self.reset()

    def reset(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to release
                transport.close()


class Take:
    """The messages of one take, held unacknowledged on their connection until they are acknowledged or given
    back; either frees the connection for the next take."""

    def __init__(self, drained: list[Drained], line: _Line | None = None, free: Callable[[_Line], None] | None = None):
        self.drained = drained
        self._line, self._free = line, free

    def ack(self) -> None:
        """Acknowledge the messages of jobs that were recorded (on Redis, in one round trip)."""
        self._settle("ack")

    def give_back(self) -> None:
        self._settle("give_back")

    def _settle(self, how: str) -> None:
        line = self._line
        if line is None:
            return
        try:
            line.settle([item.taken for item in self.drained], how)
        finally:
            self._line = None
            if self._free is not None:
                self._free(line)


class Drainer:
    """A worker process's connections for taking waiting messages: ``lines`` of them, each used by one thread
    at a time from its take until the take is acknowledged or given back. A thread that finds none free runs
    its own message alone (the prefork and solo pools have one thread, the remote pool many). ``connect``
    opens a connection to the broker (``llm_router.broker.transports.open_transport``)."""

    def __init__(self, connect: Callable[[], Transport], lines: int = 1):
        self._connect = connect
        self._lines = lines
        self._pid: int | None = None
        self._free: list[_Line] = []
        self._lock = threading.Lock()

    def _acquire(self) -> _Line | None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child opens connections of its own
                self._pid, self._free = os.getpid(), [_Line(self._connect) for _ in range(self._lines)]
            return self._free.pop() if self._free else None

    def _release(self, line: _Line) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._free.append(line)

    def take(self, queues: list[str], room: int, wait_ms: float, tasks: frozenset[str] | None = None) -> Take:
        """Messages of our tasks (of ``tasks`` when given) from ``queues`` (in order) holding up to ``room``
        inputs (the count their producer put in a header; one when absent), waiting at most ``wait_ms`` for
        them to arrive. The last message taken may overfill ``room``: a message is never split. A broker
        error ends the take with nothing: the message in hand runs alone and the broker hands the others out
        again."""
        line = self._acquire()
        if line is None:
            return Take([])
        try:
            drained = self._take(line, queues, room, wait_ms, tasks)
        except Exception as exc:
            log.warning("dynamic batching skipped: the broker connection failed (%s)", type(exc).__name__)
            line.reset()
            drained = []
        return Take(drained, line, self._release)

    def _take(
        self, line: _Line, queues: list[str], room: int, wait_ms: float, tasks: frozenset[str] | None
    ) -> list[Drained]:
        taken: list[Drained] = []
        held: list[Taken] = []
        jobs = 0
        deadline = time.monotonic() + wait_ms / 1000.0
        transport = line.transport
        while jobs < room and len(held) < room:
            asked = room - jobs
            got = transport.take(queues, asked, tasks)
            for message in got:
                if not _runnable_now(message.headers):
                    held.append(message)  # given back below, or the next take would return it again
                elif tasks is not None and message.task not in tasks:
                    held.append(message)  # another kind of task, first in line: the take ends here
                    got = []
                    break
                else:
                    drained = self._accept(line, message)
                    if drained is not None:
                        taken.append(drained)
                        jobs += inputs_of(message.headers)
            # A transport that answers with all it has: fewer inputs than asked means the queues are empty for now.
            emptied = not got or (transport.takes_many and sum(inputs_of(m.headers) for m in got) < asked)
            if emptied:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.001)
        line.settle(held, "give_back")
        return taken

    @staticmethod
    def _accept(line: _Line, message: Taken) -> Drained | None:
        name = message.task
        body = task_body(message)
        if body is None:
            log.error("refusing a %s message that is not a JSON task message (%s)", name, message.content_type)
            line.settle([message], "ack")  # what Celery does with content it refuses
            return None
        args, kwargs = body
        task_id = message.headers.get("id")
        return Drained(
            KIND_OF_TASK[name], tuple(args), kwargs, task_id if isinstance(task_id, str) else None, message, name
        )


def sampled(task_id: str, share: float) -> bool:
    """Whether a task is in the sample of ``share`` (0 to 1) of all: decided by its id, so every process
    samples the same tasks."""
    return share >= 1.0 or zlib.crc32(task_id.encode()) < share * 2**32


def report(app: Any, drained: list[Drained], hostname: str | None, outcome: str, runtime_s: float) -> None:
    """Tell monitors (Flower) that the drained messages ran, as Celery does for the ones it delivers: the
    task was received (its name and its arguments, which are job ids only) and succeeded; for the share of
    them the settings' ``task_events`` samples."""
    share = app.router_settings.task_events
    sample = [(item.task_id, item) for item in drained if item.task_id and sampled(item.task_id, share)]
    if not sample:
        return
    # One message of many events ("task.multi", which Celery's receivers and Flower read as a list).
    with (
        app.amqp.producer_pool.acquire(block=True) as producer,
        app.events.Dispatcher(
            producer.connection,
            hostname,
            channel=producer.channel,
            buffer_group=frozenset({"task"}),
            buffer_limit=2 * len(sample) + 1,
        ) as dispatcher,
    ):
        for task_id, item in sample:
            dispatcher.send(
                "task-received",
                uuid=task_id,
                name=item.name or TASK_NAMES[item.kind],
                args=repr(list(item.args)),
                kwargs=repr(item.kwargs),
                retries=0,
            )
            dispatcher.send("task-succeeded", uuid=task_id, result=repr(outcome), runtime=runtime_s)
        dispatcher.flush()
