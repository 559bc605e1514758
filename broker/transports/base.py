"""One protocol for how job messages travel: publish, take many, acknowledge, give back, and list the messages
handed out and not yet acknowledged. Draining, interludes and the sweeper use it; each broker implements it
(``redis.py``: kombu's Redis layout; ``kombu_channel.py``: RabbitMQ and the embedded filesystem broker through a
kombu channel; ``memory.py``: in memory, for tests)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

JSON = "application/json"


@dataclass(frozen=True)
class TaskMessage:
    """A task's message: a job's (``args`` its id) or a bulk message's (``kwargs`` its ``job_ids``)."""

    task_name: str
    task_id: str
    args: list[str]
    kwargs: dict[str, Any]
    queue: str
    inputs: int  # the texts its jobs run through the model, in the header dynamic batching counts
    priority: int | None  # the broker's priority step
    headers: dict[str, str] = field(default_factory=dict)  # more headers: its producer's trace context


@dataclass(frozen=True)
class Taken:
    """A message taken off a queue (or held unacknowledged), as every transport hands it over."""

    tag: str  # the broker's delivery tag: what acknowledges it or gives it back
    queue: str  # the queue it came from
    headers: dict[str, Any]
    content_type: str
    body: bytes  # the payload as its producer serialised it
    source: str = ""  # where it goes back to when given back (a Redis list; the queue elsewhere)
    native: Any = field(default=None, compare=False, repr=False)  # the broker library's own message, if any

    @property
    def task(self) -> str:
        name = self.headers.get("task")
        return name if isinstance(name, str) else ""

    def json_body(self) -> Any:
        """The payload decoded as JSON, or None: content of any other type is never decoded (no pickle)."""
        if self.content_type != JSON:
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None


class Transport(Protocol):
    """How messages travel on one broker connection, used by one thread at a time."""

    # True when ``take`` answers with all that waits, up to the room asked for (fewer means the queues are
    # empty for now); False when it answers with one message at most.
    takes_many: bool

    def publish(self, message: TaskMessage) -> None:
        """Put a message on its queue at its priority; raises when the broker refuses it."""

    def declare(self, queues: list[str]) -> None:
        """Make sure ``queues`` exist as their producers declare them: a consumer may start before any producer."""

    def take(self, queues: list[str], room: int, tasks: frozenset[str] | None = None) -> list[Taken]:
        """Messages from ``queues`` (in order of preference) holding up to ``room`` inputs, held unacknowledged
        until ``ack`` or ``give_back``; only messages of ``tasks`` when given (a queue stops at its first other
        message, which stays first in line)."""

    def ack(self, taken: list[Taken]) -> None:
        """Acknowledge messages whose jobs are recorded: they are gone for good."""

    def give_back(self, taken: list[Taken]) -> None:
        """Put messages back first in line on their queues, unless the sweeper dropped them meanwhile."""

    def held_since(self, before: float) -> list[Taken]:
        """Messages handed out before ``before`` (a Unix time) and not yet acknowledged; empty for a broker
        that hands a dead consumer's messages out again by itself."""

    def drop_held(self, tags: list[str]) -> None:
        """Forget held messages whose jobs were published again; their holder's acknowledgement is a no-op."""

    def empty(self, queue: str) -> bool:
        """Whether no message waits on ``queue``, at any priority."""

    def close(self) -> None:
        """Release the connection; messages still held go back to the broker as it decides."""
