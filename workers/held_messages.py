"""The messages a Redis broker handed out and has not had acknowledged, as kombu keeps them, and the jobs they
name: what the sweeper reads to find the messages a dead worker took and never started."""

from __future__ import annotations

import base64
import json
from typing import cast

import redis

from llm_router.broker.queues import redis_lists
from llm_router.workers.messages import BadBulkMessage, BadMessage, parse_messages

# kombu's Redis transport: each message handed out and not yet acknowledged, by delivery tag, and when.
UNACKED_KEY, UNACKED_INDEX_KEY = "unacked", "unacked_index"


def job_ids_in(held: bytes | None) -> list[str]:
    """The jobs of a message as kombu's Redis transport keeps it unacknowledged: ``[message, exchange,
    routing key]``, the message's body a JSON ``[args, kwargs, options]``. Nothing for what is not a job's."""
    try:
        message = json.loads(held or b"null")[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs = json.loads(body)[:2]
        return [job.job_id for job in parse_messages(tuple(args), dict(kwargs))]
    except BadBulkMessage as exc:
        return exc.job_ids
    except BadMessage as exc:
        return [exc.job_id] if exc.job_id else []
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return []


class HeldMessages:
    """The messages a Redis broker handed out and has not had acknowledged."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    def held_since(self, before: float) -> dict[bytes, list[str]]:
        """Delivery tag → the jobs of its message, for messages handed out before ``before`` (a Unix time)."""
        tags = cast(list[bytes], self.redis.zrangebyscore(UNACKED_INDEX_KEY, "-inf", before))
        if not tags:
            return {}
        messages = cast(list[bytes | None], self.redis.hmget(UNACKED_KEY, tags))
        return {tag: job_ids_in(held) for tag, held in zip(tags, messages, strict=True)}

    def empty(self, queue: str) -> bool:
        """Whether no message waits on ``queue``, at any priority."""
        pipe = self.redis.pipeline(transaction=False)
        for key in redis_lists(queue):
            pipe.llen(key)
        return not any(pipe.execute())

    def drop(self, tags: list[bytes]) -> None:
        """Drop held copies whose jobs were published again; a holder that lives after all finds its
        acknowledgement a no-op."""
        if tags:
            pipe = self.redis.pipeline(transaction=False)
            names = [tag.decode() for tag in tags]
            pipe.hdel(UNACKED_KEY, *names)
            pipe.zrem(UNACKED_INDEX_KEY, *names)
            pipe.execute()
