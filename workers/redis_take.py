"""Taking waiting messages from kombu's Redis lists in one round trip, and acknowledging them in another.

kombu's ``basic_get`` asks a queue's priority lists one by one (ten round trips to find a queue empty, ten to
reach a message of the default priority), then records the message as unacknowledged in a second step, and
each ``ack`` is a round trip of its own. Here one script pops messages across the lists in order of
preference, up to a count of inputs, and records each one as kombu does (its ``unacked`` hash and the time
index the visibility timeout reads), atomically: a process killed at any moment leaves every message either
on its list or among the unacknowledged ones, which the broker hands out again.
"""

from __future__ import annotations

import json
import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import QoS as VirtualQoS

from llm_router.broker.queues import INPUTS_HEADER, redis_lists

# KEYS: the lists in order of preference, then the unacked hash and its index.
# ARGV: the inputs wanted, the time now, the input-count header's name, the task names to take (all when empty).
# A message counts the inputs its producer put in the header (one when absent); the last one may overfill.
_POP = """
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
    taken[#taken + 1] = item
  end
  if inputs >= room then break end
end
return taken
"""


def supports(channel: Any) -> bool:
    """A kombu Redis channel whose keys carry no global prefix (the lists are named as ``redis_lists``)."""
    return isinstance(channel, kombu_redis.Channel) and not getattr(channel, "global_keyprefix", "")


class RedisTake:
    def __init__(self, channel: Any):
        self._channel = channel
        self._pop = channel.client.register_script(_POP)

    def pop(self, queues: list[str], room: int, tasks: frozenset[str] | None = None) -> list[Any]:
        """Up to ``room`` inputs' worth of messages from ``queues`` (in order, each queue's priority steps in
        order), held unacknowledged on this channel as ``basic_get`` holds them; only messages of ``tasks``
        when given (a list stops at its first other message)."""
        channel = self._channel
        keys = [key for queue in queues for key in redis_lists(queue)]
        keys += [channel.unacked_key, channel.unacked_index_key]
        raw = self._pop(keys=keys, args=[room, time.time(), INPUTS_HEADER, ",".join(sorted(tasks or ()))])
        messages = []
        for item in raw:
            message = channel.Message(json.loads(item), channel=channel)
            VirtualQoS.append(channel.qos, message, message.delivery_tag)  # kombu's own bookkeeping, in memory
            messages.append(message)
        return messages

    def ack(self, messages: list[Any]) -> None:
        """Acknowledge ``messages`` in one round trip."""
        qos = self._channel.qos
        with self._channel.client.pipeline() as pipe:
            for message in messages:
                pipe.zrem(qos.unacked_index_key, message.delivery_tag).hdel(qos.unacked_key, message.delivery_tag)
            pipe.execute()
        for message in messages:
            VirtualQoS.ack(qos, message.delivery_tag)
