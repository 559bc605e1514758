"""Cluster-wide model cooldowns: a model that keeps failing is passed over for a while.

A model is cooled down when the policy says so for one failure (401, 403, 404, or a 429 with
Retry-After), or when more than half of its calls in the last minute failed (at least ``min_calls``).
State lives in Redis so every worker skips the model at once; without Redis it is per process.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

import redis

from llm_router.broker.counters import COOLDOWN_PREFIX

HEALTH_WINDOW_S = 60.0


class Cooldowns(Protocol):
    def remaining_s(self, model_id: str) -> float: ...

    def cool(self, model_id: str, seconds: float) -> None: ...

    def record(self, model_id: str, ok: bool) -> bool:
        """Count a call; True when this failure tipped the model into a cooldown-worthy failure rate."""
        ...

    def record_successes(self, model_ids: list[str]) -> None:
        """Count many calls that answered (one model id per call), at once."""
        ...


def failing(calls: int, failures: int, min_calls: int) -> bool:
    return calls >= min_calls and failures * 2 > calls


class RedisCooldowns:
    def __init__(self, client: redis.Redis, min_calls: int = 4):
        self._redis = client
        self._min_calls = min_calls

    def remaining_s(self, model_id: str) -> float:
        ttl_ms = self._redis.pttl(f"{COOLDOWN_PREFIX}{model_id}")
        return max(0.0, ttl_ms / 1000.0) if isinstance(ttl_ms, int) and ttl_ms > 0 else 0.0

    def cool(self, model_id: str, seconds: float) -> None:
        if seconds > 0:
            self._redis.set(f"{COOLDOWN_PREFIX}{model_id}", "1", px=max(1, int(seconds * 1000)))

    def record(self, model_id: str, ok: bool) -> bool:
        # Calls and failures are two sorted sets (by time) counted with ZCARD: the cost of a call stays the same
        # however many calls the window holds. A success needs no answer, so its pipeline reads nothing.
        if ok:
            self.record_successes([model_id])
            return False
        calls, failures = f"llm-router:health:{model_id}", f"llm-router:health-failed:{model_id}"
        pipe = self._redis.pipeline(transaction=False)
        self._count(pipe, [calls, failures], time.time())
        pipe.zcard(calls)
        pipe.zcard(failures)
        *_, call_count, failure_count = pipe.execute()
        return failing(int(call_count), int(failure_count), self._min_calls)

    def record_successes(self, model_ids: list[str]) -> None:
        if model_ids:
            pipe = self._redis.pipeline(transaction=False)  # one round trip for them all
            now = time.time()
            for model_id in model_ids:
                self._count(pipe, [f"llm-router:health:{model_id}"], now)
            pipe.execute()

    @staticmethod
    def _count(pipe: Any, keys: list[str], now: float) -> None:
        member = uuid.uuid4().hex
        for key in keys:
            pipe.zadd(key, {member: now})
            pipe.zremrangebyscore(key, 0, now - HEALTH_WINDOW_S)
            pipe.expire(key, int(HEALTH_WINDOW_S * 2))


class LocalCooldowns:
    """The embedded mode's cooldowns: this process only."""

    def __init__(self, min_calls: int = 4):
        self._until: dict[str, float] = {}
        self._calls: dict[str, list[tuple[float, bool]]] = {}
        self._min_calls = min_calls

    def remaining_s(self, model_id: str) -> float:
        return max(0.0, self._until.get(model_id, 0.0) - time.monotonic())

    def cool(self, model_id: str, seconds: float) -> None:
        self._until[model_id] = max(self._until.get(model_id, 0.0), time.monotonic() + seconds)

    def record(self, model_id: str, ok: bool) -> bool:
        now = time.monotonic()
        calls = [c for c in self._calls.get(model_id, []) if c[0] > now - HEALTH_WINDOW_S] + [(now, ok)]
        self._calls[model_id] = calls
        return not ok and failing(len(calls), sum(1 for _, good in calls if not good), self._min_calls)

    def record_successes(self, model_ids: list[str]) -> None:
        for model_id in model_ids:
            self.record(model_id, ok=True)
