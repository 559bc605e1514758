"""Job messages on Redis, in kombu's own layout, so that Celery's consumer and this transport share the queues.

A queue is one list per priority step (``redis_lists``); a message is kombu's JSON envelope around Celery's
task message (base64 body, delivery info, a delivery tag). A message handed out and not yet acknowledged
sits in kombu's ``unacked`` hash (tag → ``[message, exchange, routing key]``) and its time index
``unacked_index``, which the visibility timeout reads. Publishing is one ``LPUSH`` (with a wake in its round
trip); a take is one script that pops messages across the lists in order of preference, up to a count of
inputs, and records each as kombu does, atomically: a process killed at any moment leaves every message
either on its list or held, which the broker (or the sweeper, sooner) hands out again. kombu's ``basic_get``
would ask the lists one by one and record the message in a second step.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, cast

import redis

from llm_router.broker.queues import INPUTS_HEADER, redis_lists
from llm_router.broker.transports.base import JSON, Taken, TaskMessage

UNACKED_KEY, UNACKED_INDEX_KEY = "unacked", "unacked_index"
WAKE_PREFIX = "llm-router:wake:"


def wake_channel(queue: str) -> str:
    """The channel a message's publisher tells of it on, in the round trip of its ``LPUSH``: a consumer that
    takes with a script cannot block in it, and polling an empty queue every millisecond costs Redis and the
    consumer CPU, every 50 ms an interactive job up to 50 ms; so an idle consumer sleeps until a wake comes (or
    its back-off ends: a message from another producer, or a wake lost while it was not subscribed, waits that
    long at most)."""
    return WAKE_PREFIX + queue


# KEYS: the lists in order of preference, then the unacked hash and its index.
# ARGV: the inputs wanted, the time now, the input-count header's name, the task names to take (all when empty).
# Returns (list position, message) pairs. A message counts the inputs its producer put in the header (one when
# absent); the last one may overfill. Both scripts declare themselves (``#!lua``, Redis 7): a Redis at its
# maxmemory refuses them before they start, where a script without the line is checked at each command that
# needs memory, and could pop a message and then fail to hold it, losing it.
_TAKE = """#!lua
local room, now, header = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local accepted, only = {}, ARGV[4] ~= ''
for name in string.gmatch(ARGV[4], '[^,]+') do accepted[name] = true end
local unacked, index = KEYS[#KEYS - 1], KEYS[#KEYS]
local taken, inputs = {}, 0
for i = 1, #KEYS - 2 do
  while inputs < room do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    local ok, payload = pcall(cjson.decode, item)
    local props = ok and type(payload) == 'table' and payload['properties']
    local info = type(props) == 'table' and props['delivery_info']
    local headers = ok and type(payload) == 'table' and payload['headers']
    if type(headers) ~= 'table' then headers = {} end
    if type(info) ~= 'table' or type(props['delivery_tag']) ~= 'string' or (only and not accepted[headers['task']]) then
      -- not a kombu message, or not a task this take runs: back at the head of its list, where Celery's
      -- consumer takes it next; the rest of this list waits behind it
      redis.call('RPUSH', KEYS[i], item)
      break
    end
    redis.call('ZADD', index, now, props['delivery_tag'])
    redis.call('HSET', unacked, props['delivery_tag'],
      '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ',' .. cjson.encode(info['routing_key']) .. ']')
    local count = headers[header]
    if type(count) ~= 'number' or count < 1 then count = 1 end
    inputs = inputs + count
    taken[#taken + 1] = i
    taken[#taken + 1] = item
  end
  if inputs >= room then break end
end
return taken
"""

# KEYS: the unacked hash and its index. ARGV: (tag, list, message) triples. A message still held goes back to
# the head of its list; one the sweeper dropped meanwhile (its jobs published again) stays dropped.
_GIVE_BACK = """#!lua
for i = 1, #ARGV, 3 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('RPUSH', ARGV[i + 1], ARGV[i + 2])
  end
end
return 0
"""


def _taken(raw: bytes | str, queue: str, source: str = "") -> Taken:
    """A message in kombu's envelope; one that is not reads as a message with no task and no body."""
    try:
        envelope = json.loads(raw)
        properties = envelope.get("properties") or {}
        body = envelope["body"]
        decoded = base64.b64decode(body) if properties.get("body_encoding") == "base64" else str(body).encode()
        headers = envelope.get("headers")
        return Taken(
            str(properties.get("delivery_tag") or ""),
            queue,
            headers if isinstance(headers, dict) else {},
            envelope.get("content-type", JSON),
            decoded,
            source,
            raw.decode() if isinstance(raw, bytes) else raw,
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return Taken("", queue, {}, "", b"", source)


def from_unacked(held: bytes | None) -> Taken:
    """A message as kombu keeps it unacknowledged: ``[message, exchange, routing key]``."""
    try:
        message, _, routing_key = json.loads(held or b"null")
        return _taken(json.dumps(message), str(routing_key))
    except (ValueError, TypeError):
        return Taken("", "", {}, "", b"")


class RedisTransport:
    takes_many = True

    def __init__(self, client: redis.Redis, app: Any = None):
        """``app``: the Celery app whose task protocol ``publish`` writes (only publishing needs one)."""
        self.redis, self._app = client, app
        self._take = client.register_script(_TAKE)
        self._give_back = client.register_script(_GIVE_BACK)

    def publish(self, message: TaskMessage) -> None:
        """Put a task's message on its queue at its priority (kombu's order: lower first); raises what redis-py
        raises when Redis cannot be reached."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(redis_lists(message.queue)[message.priority or 0], self.envelope(message))
        pipe.publish(wake_channel(message.queue), b"")
        pipe.execute()

    def envelope(self, message: TaskMessage) -> str:
        """The message as kombu's Redis transport stores it, around Celery's task message."""
        app = self._app
        if app is None:
            raise TypeError("publishing needs the Celery app whose task messages it writes")
        headers, properties, body, _ = app.amqp.create_task_message(
            message.task_id,
            message.task_name,
            message.args,
            message.kwargs,
            reply_to=app.thread_oid,
            ignore_result=None,
        )
        headers[INPUTS_HEADER] = message.inputs
        headers.update(message.headers)
        encoded = base64.b64encode(json.dumps(body).encode()).decode()
        return json.dumps(
            {
                "body": encoded,
                "content-encoding": "utf-8",
                "content-type": JSON,
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

    def take(self, queues: list[str], room: int, tasks: frozenset[str] | None = None) -> list[Taken]:
        lists = [(queue, key) for queue in queues for key in redis_lists(queue)]
        keys = [key for _, key in lists] + [UNACKED_KEY, UNACKED_INDEX_KEY]
        raw = self._take(keys=keys, args=[room, time.time(), INPUTS_HEADER, ",".join(sorted(tasks or ()))])
        pairs = zip(raw[::2], raw[1::2], strict=True)
        return [_taken(item, lists[int(at) - 1][0], lists[int(at) - 1][1]) for at, item in pairs]

    def ack(self, taken: list[Taken]) -> None:
        self.drop_held([message.tag for message in taken])

    def give_back(self, taken: list[Taken]) -> None:
        if taken:
            # The last taken goes back first: the first taken ends first in line.
            triples = [part for m in reversed(taken) for part in (m.tag, m.source, m.native)]
            self._give_back(keys=[UNACKED_KEY, UNACKED_INDEX_KEY], args=triples)

    def held_since(self, before: float) -> list[Taken]:
        tags = cast(list[bytes], self.redis.zrangebyscore(UNACKED_INDEX_KEY, "-inf", before))
        if not tags:
            return []
        messages = cast(list[bytes | None], self.redis.hmget(UNACKED_KEY, tags))
        return [_with_tag(from_unacked(held), tag.decode()) for tag, held in zip(tags, messages, strict=True)]

    def drop_held(self, tags: list[str]) -> None:
        if tags:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(UNACKED_INDEX_KEY, *tags)
            pipe.hdel(UNACKED_KEY, *tags)
            pipe.execute()

    def declare(self, queues: list[str]) -> None:
        """A Redis list exists once a message is pushed."""

    def empty(self, queue: str) -> bool:
        pipe = self.redis.pipeline(transaction=False)
        for key in redis_lists(queue):
            pipe.llen(key)
        return not any(pipe.execute())

    def close(self) -> None:
        self.redis.close()


def _with_tag(taken: Taken, tag: str) -> Taken:
    """A held message keeps the tag it is held under, even when its envelope cannot be read."""
    return taken if taken.tag == tag else Taken(tag, taken.queue, taken.headers, taken.content_type, taken.body)
