"""Shared-state figures the workers keep in Redis and ``/metrics`` reads: rate-limit deferrals per tier,
and the models cooling down (a key per model, expiring when its cooldown ends)."""

from __future__ import annotations

import logging

import redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

COOLDOWN_PREFIX = "llm-router:cooldown:"
DEFERRALS_KEY = "llm-router:deferrals"  # a hash: tier → messages put off (a rate limit, a chain all cooling)


def count_deferral(client: redis.Redis, tier: str) -> None:
    """Never fails the job: a lost count only lowers a metric."""
    try:
        client.hincrby(DEFERRALS_KEY, tier, 1)
    except RedisError as exc:
        log.debug("a deferral was not counted (%s)", exc)


def deferrals(client: redis.Redis) -> dict[str, int]:
    found = client.hgetall(DEFERRALS_KEY)
    return {tier.decode(): int(count) for tier, count in found.items()}  # type: ignore[union-attr]


def cooling(client: redis.Redis) -> dict[str, float]:
    """Models cooling down now, and the seconds left of each."""
    keys = list(client.scan_iter(match=COOLDOWN_PREFIX + "*", count=500))
    if not keys:
        return {}
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
    left = pipe.execute()
    return {
        key.decode().removeprefix(COOLDOWN_PREFIX): ms / 1000.0
        for key, ms in zip(keys, left, strict=True)
        if isinstance(ms, int) and ms > 0
    }
