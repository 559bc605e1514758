"""A broker in memory, for tests: the same protocol as Redis's, in one process."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field

from llm_router.broker.queues import INPUTS_HEADER
from llm_router.broker.transports.base import JSON, Taken, TaskMessage


def inputs_header(taken: Taken) -> int:
    count = taken.headers.get(INPUTS_HEADER)
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1


@dataclass
class MemoryBroker:
    """The queues and held messages several ``MemoryTransport`` connections share."""

    # queue → (priority step, arrival, message): lower steps first, then first in first out.
    queues: dict[str, list[tuple[int, int, Taken]]] = field(default_factory=dict)
    held: dict[str, tuple[float, int, Taken]] = field(default_factory=dict)  # tag → (taken at, step, message)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrivals: itertools.count[int] = field(default_factory=itertools.count)
    tags: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def put(self, taken: Taken, step: int = 0, *, first: bool = False) -> None:
        with self.lock:
            arrival = -next(self.arrivals) if first else next(self.arrivals)
            waiting = self.queues.setdefault(taken.queue, [])
            waiting.append((step, arrival, taken))
            waiting.sort(key=lambda entry: (entry[0], entry[1]))

    def waiting(self, queue: str) -> list[Taken]:
        with self.lock:
            return [taken for _, _, taken in self.queues.get(queue, [])]


class MemoryTransport:
    takes_many = True

    def __init__(self, broker: MemoryBroker):
        self.broker = broker

    def publish(self, message: TaskMessage) -> None:
        headers = {**message.headers, "task": message.task_name, "id": message.task_id, INPUTS_HEADER: message.inputs}
        body = json.dumps([message.args, message.kwargs, {}]).encode()
        tag = f"m{next(self.broker.tags)}"
        self.broker.put(Taken(tag, message.queue, headers, JSON, body, source=message.queue), message.priority or 0)

    def take(self, queues: list[str], room: int, tasks: frozenset[str] | None = None) -> list[Taken]:
        broker, taken, inputs = self.broker, [], 0
        with broker.lock:
            for queue in queues:
                waiting = broker.queues.get(queue, [])
                while waiting and inputs < room:
                    step, _, message = waiting[0]
                    if tasks is not None and message.task not in tasks:
                        break
                    waiting.pop(0)
                    broker.held[message.tag] = (time.time(), step, message)
                    taken.append(message)
                    inputs += inputs_header(message)
                if inputs >= room:
                    break
        return taken

    def ack(self, taken: list[Taken]) -> None:
        with self.broker.lock:
            for message in taken:
                self.broker.held.pop(message.tag, None)

    def give_back(self, taken: list[Taken]) -> None:
        for message in reversed(taken):  # the first taken ends first in line
            with self.broker.lock:
                held = self.broker.held.pop(message.tag, None)
            if held is not None:
                self.broker.put(message, held[1], first=True)

    def held_since(self, before: float) -> list[Taken]:
        with self.broker.lock:
            return [message for at, _, message in self.broker.held.values() if at < before]

    def drop_held(self, tags: list[str]) -> None:
        with self.broker.lock:
            for tag in tags:
                self.broker.held.pop(tag, None)

    def declare(self, queues: list[str]) -> None:
        """A queue exists once named."""

    def empty(self, queue: str) -> bool:
        return not self.broker.waiting(queue)

    def close(self) -> None:
        """Nothing to release: the broker outlives its connections."""
