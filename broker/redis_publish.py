"""Publishing a job's message on Redis in one round trip.

Celery's ``send_task`` reaches Redis through kombu's producer pool, its retry wrapper and a new Redis client
object per message: 0.5 ms of the producer's time for an ``LPUSH`` that takes 0.07 ms. Here Celery still
builds the task message (its protocol, its headers); the envelope around it is the one kombu's Redis
transport writes (base64 body, delivery info, a delivery tag), and one ``LPUSH`` puts it on the list of its
priority step, where kombu's consumer and ``llm_router.workers.redis_take`` look for it. A message with a countdown, or
any message on another broker, still goes through ``send_task``.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from llm_router.broker.queues import INPUTS_HEADER, redis_lists

# As kombu's publish does by default: a dropped connection (a Redis restart) is tried again three times,
# for about half a second in all, before the producer is told the message was not sent.
_RETRY = Retry(ExponentialBackoff(cap=0.2, base=0.05), 3)


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


def publishes_directly(app: Any) -> bool:
    """Whether ``app``'s broker is a Redis whose lists are named as ``redis_lists`` names them."""
    url = app.conf.broker_url or ""
    options = app.conf.broker_transport_options or {}
    return url.startswith(("redis://", "rediss://")) and not options.get("global_keyprefix")


class RedisPublisher:
    def __init__(self, app: Any):
        self._app = app
        self._client = redis.Redis.from_url(
            app.conf.broker_url, retry=_RETRY, retry_on_error=[redis.ConnectionError, redis.TimeoutError]
        )

    def send(self, message: TaskMessage) -> None:
        """Put a task's message on its queue at its priority (kombu's order: lower first); raises what redis-py
        raises when Redis cannot be reached."""
        self._client.lpush(redis_lists(message.queue)[message.priority or 0], self.envelope(message))

    def envelope(self, message: TaskMessage) -> str:
        """The message as kombu's Redis transport stores it."""
        app = self._app
        headers, properties, body, _ = app.amqp.create_task_message(
            message.task_id,
            message.task_name,
            message.args,
            message.kwargs,
            reply_to=app.thread_oid,
            ignore_result=None,
        )
        headers[INPUTS_HEADER] = message.inputs
        encoded = base64.b64encode(json.dumps(body).encode()).decode()
        return json.dumps(
            {
                "body": encoded,
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": headers,
                "properties": {
                    **properties,
                    "delivery_mode": 2,
                    "delivery_info": {"exchange": "", "routing_key": message.queue},
                    "priority": message.priority or 0,
                    "body_encoding": "base64",
                    "delivery_tag": str(uuid.uuid4()),
                },
            }
        )

    def close(self) -> None:
        self._client.close()
