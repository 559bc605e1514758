"""Cluster-wide rate limits: a moving window per tier queue and per remote provider key, in Redis.

Celery's own ``rate_limit`` counts per worker process, so N workers would allow N times the limit; these
windows live in Redis (the ``limits`` library's moving-window strategy), shared by every worker process
on every machine. A moving window never lets any 60 s (or 3,600 s) span exceed the limit, which a fixed
window does at its edges. Without Redis (the embedded mode) the windows are per process.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

NAMESPACE = "llm-router"
# A window lasts this much longer than its limit's period. The limiter counts a call when a worker takes its
# slot (stamped with that worker's clock just before), the provider when the call arrives; in between a thread
# may wait for a core or a database connection. Without the margin, 2,380 calls under a limit of 1,500 a
# minute put 1,501 into one 60 s span at the stand-in (ops/bench/remote.py's (h')).
WINDOW_MARGIN_S = 1


@dataclass(frozen=True)
class Rule:
    item: RateLimitItem
    key: tuple[str, ...]

    def describe(self) -> str:
        return f"{'/'.join(self.key)} {self.item}"


def window_rules(key: tuple[str, ...], per_minute: int | None, per_hour: int | None) -> list[Rule]:
    rules = []
    if per_minute:
        rules.append(Rule(RateLimitItemPerSecond(per_minute, 60 + WINDOW_MARGIN_S), (NAMESPACE, *key)))
    if per_hour:
        rules.append(Rule(RateLimitItemPerSecond(per_hour, 3600 + WINDOW_MARGIN_S), (NAMESPACE, *key)))
    return rules


class RateLimiter:
    def __init__(self, redis_url: str | None):
        options = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0} if redis_url else {}
        self._storage = storage_from_string(redis_url or "memory://", **options)
        self._limiter = MovingWindowRateLimiter(self._storage)

    def acquire(self, rules: list[Rule]) -> float:
        """Take one slot of every rule and return 0, or take none and return the seconds until one frees.

        Every rule is tested before any is hit, so a refusal rarely spends a slot; when two workers race
        for the last slot, the loser's earlier hits are spent, which can only under-use a limit."""
        for rule in rules:
            if not self._limiter.test(rule.item, *rule.key):
                return self._wait_s(rule)
        for rule in rules:
            if not self._limiter.hit(rule.item, *rule.key):
                return self._wait_s(rule)
        return 0.0

    def _wait_s(self, rule: Rule) -> float:
        reset = self._limiter.get_window_stats(rule.item, *rule.key).reset_time
        # A little spread so that deferred jobs do not all come back in the same millisecond.
        return max(0.05, reset - time.time()) + random.uniform(0.0, 0.25)

    def remaining(self, rule: Rule) -> int:
        """Slots left in the rule's window right now."""
        return int(self._limiter.get_window_stats(rule.item, *rule.key).remaining)

    def clear(self, rules: list[Rule]) -> None:
        for rule in rules:
            self._limiter.clear(rule.item, *rule.key)
