"""Each gateway process keeps a key in Redis while it runs (``llm-router status`` lists them): its address
and process, renewed every ``RENEW_S``, gone ``TTL_S`` after the process stops renewing it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

KEY_PREFIX = "llm-router:gateway:"
TTL_S = 30
RENEW_S = 10
ADDRESS_VARIABLE = "LLM_ROUTER_GATEWAY_ADDRESS"  # Settings.gateway_address: set by `llm-router serve` for its processes


async def announce(url: str, address: str | None) -> None:
    """Renew this process's key until cancelled."""
    client = aioredis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    key = f"{KEY_PREFIX}{socket.gethostname()}:{os.getpid()}"
    value = json.dumps(
        {
            "address": address or "?",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
        }
    )
    try:
        while True:
            with contextlib.suppress(RedisError):  # Redis away: status shows no gateway until it is back
                await client.set(key, value, ex=TTL_S)
            await asyncio.sleep(RENEW_S)
    finally:
        with contextlib.suppress(RedisError):
            await client.delete(key)
        await client.aclose()


def gateways(url: str | None) -> list[dict[str, Any]]:
    """The gateway processes that announced themselves lately."""
    if not url:
        return []
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=100))
        values = client.mget(keys) if keys else []
        return [json.loads(value) for value in values if value]  # type: ignore[union-attr]
    except RedisError:
        return []
    finally:
        client.close()
