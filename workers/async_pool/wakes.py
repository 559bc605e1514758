"""Waking an idle loop when a message is published on one of its queues (a Redis broker only; see
``llm_router.broker.transports.redis.wake_channel``)."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llm_router.broker.transports.redis import wake_channel
from llm_router.workers.log_limits import Throttle

log = logging.getLogger(__name__)

RESUBSCRIBE_S = 1.0  # a lost subscription is made again after this long
OUTAGES = Throttle()


class Wakes:
    """``event`` is set by each message published on the queues' wake channels (and by ``set``); ``heard``
    says whether the subscription is confirmed now: while it is not, no wake can be relied on."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.heard = False

    def set(self) -> None:
        self.event.set()

    async def listen(self, url: str, queues: list[str]) -> None:
        """Until cancelled; Redis going away is waited out (``heard`` is False meanwhile)."""
        channels = [wake_channel(queue) for queue in queues]
        while True:
            client = aioredis.Redis.from_url(url, socket_connect_timeout=5.0, client_name="llm-router-wakes")
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(*channels)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        self.heard = True  # a message published before this may have gone unheard: take
                    self.event.set()
            except (RedisError, OSError) as exc:
                if OUTAGES.allows("wakes"):
                    log.warning("idle takes are not woken (%s): they poll until Redis answers", exc)
            finally:
                self.heard = False
                await pubsub.aclose()
                await client.aclose()
            await asyncio.sleep(RESUBSCRIBE_S)
