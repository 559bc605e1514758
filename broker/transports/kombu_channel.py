"""Job messages on RabbitMQ and on the embedded filesystem broker, through a kombu channel of the Celery app's
broker: ``basic_get`` takes the first waiting message of the first queue that has one. Such a broker hands a
dead consumer's messages out again by itself (RabbitMQ when the connection closes), so nothing is listed as
held. Publishing goes through Celery, which declares what the broker needs."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from kombu.message import Message

from llm_router.broker.queues import INPUTS_HEADER
from llm_router.broker.transports.base import Taken, TaskMessage

log = logging.getLogger(__name__)


class KombuTransport:
    takes_many = False

    def __init__(self, app: Any):
        self.app = app
        # No heartbeats: nothing would send them between two takes, and a broker that missed them would close
        # the connection under the messages this process holds.
        self.connection = app.connection_for_read(heartbeat=0)

    @property
    def channel(self) -> Any:
        return self.connection.default_channel

    def publish(self, message: TaskMessage) -> None:
        send_through_celery(self.app, message)

    def declare(self, queues: list[str]) -> None:
        """Each queue as Celery declares it (its exchange, binding and priority levels)."""
        known = self.app.amqp.queues
        for name in queues:
            if name in known:
                known[name](self.channel).declare()

    def take(self, queues: list[str], room: int, tasks: frozenset[str] | None = None) -> list[Taken]:
        channel = self.channel
        for queue in queues:
            raw = channel.basic_get(queue=queue, no_ack=False)
            if raw is None:
                continue
            # py-amqp hands back its own raw message; kombu's virtual transports a kombu one.
            message = raw if isinstance(raw, Message) else channel.message_to_python(raw)
            taken = Taken(
                str(message.delivery_tag),
                queue,
                dict(message.headers or {}),
                message.content_type or "",
                message.body if isinstance(message.body, bytes) else str(message.body).encode(),
                queue,
                message,
            )
            if tasks is not None and taken.task not in tasks:
                self.give_back([taken])  # another kind of task, first in line: the take ends here
                return []
            return [taken]
        return []

    def ack(self, taken: list[Taken]) -> None:
        for message in taken:
            message.native.ack()

    def give_back(self, taken: list[Taken]) -> None:
        for message in reversed(taken):  # the first taken ends first in line
            message.native.requeue()

    def held_since(self, before: float) -> list[Taken]:
        return []

    def drop_held(self, tags: list[str]) -> None:
        """Nothing is listed as held."""

    def empty(self, queue: str) -> bool:
        _, waiting, _ = self.channel.queue_declare(queue=queue, passive=True)
        return not waiting

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already broken: nothing left to release
            self.connection.release()


def send_through_celery(app: Any, message: TaskMessage, countdown: float = 0.0) -> None:
    """Publish a task's message through Celery's own producer (which declares what the broker needs and holds
    a countdown's message until it is due)."""
    app.send_task(
        message.task_name,
        args=message.args,
        kwargs=message.kwargs,
        task_id=message.task_id,
        queue=message.queue,
        routing_key=message.queue,
        headers={**message.headers, INPUTS_HEADER: message.inputs},
        countdown=countdown or None,
        priority=message.priority,
    )
