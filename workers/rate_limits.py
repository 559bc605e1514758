"""Cluster-wide rate limits: a moving window per tier queue and per remote provider key, in Redis.

Celery's own ``rate_limit`` counts per worker process, so N workers would allow N times the limit; these
windows live in Redis (the ``limits`` library's moving-window strategy), shared by every worker process
on every machine. A moving window never lets any 60 s (or 3,600 s) span exceed the limit, which a fixed
window does at its edges. Without Redis (the embedded mode) the windows are per process.

A job a full window refuses is given a turn: the moment a slot frees, or the turn after the last one given,
spaced by the window's pace (its period over its limit). A backlog of N jobs then comes back at the pace the
window frees slots, each job about once, instead of all N at each freed slot (N - 1 of them refused again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
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


MIN_WAIT_S = 0.05


def next_turn(reserved_until: float, free_at: float, pace_s: float) -> tuple[float, float]:
    """A refused job's turn: when a slot frees (``free_at``) or, behind jobs given turns already, at the end of
    the turns reserved (``reserved_until``); and the new end of the turns reserved, one pace later."""
    turn = max(reserved_until, free_at)
    return turn, turn + pace_s


# next_turn on Redis, atomic across every worker process: KEYS[1] the rule's turns, ARGV free_at, pace, now.
_NEXT_TURN = """
local turn = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(ARGV[1]))
local reserved = turn + tonumber(ARGV[2])
redis.call('SET', KEYS[1], tostring(reserved), 'PX', math.ceil((reserved - tonumber(ARGV[3])) * 1000) + 1000)
return tostring(turn)
"""


class RateLimiter:
    def __init__(self, redis_url: str | None):
        options = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0} if redis_url else {}
        self._storage = storage_from_string(redis_url or "memory://", **options)
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._redis = redis.Redis.from_url(redis_url, **options) if redis_url else None
        self._next_turn = self._redis.register_script(_NEXT_TURN) if self._redis is not None else None
        self._turns: dict[str, float] = {}  # without Redis: this process's turns

    def try_acquire(self, rules: list[Rule]) -> bool:
        """Take one slot of every rule, or none (False) and no turn."""
        return self._refused(rules) is None

    def acquire(self, rules: list[Rule]) -> float:
        """Take one slot of every rule and return 0, or take none and return the seconds until the job's turn
        (see the module's doc)."""
        refused = self._refused(rules)
        return 0.0 if refused is None else self._turn_in_s(refused)

    def _refused(self, rules: list[Rule]) -> Rule | None:
        """Every rule is tested before any is hit, so a refusal rarely spends a slot; when two workers race
        for the last slot, the loser's earlier hits are spent, which can only under-use a limit."""
        for rule in rules:
            if not self._limiter.test(rule.item, *rule.key):
                return rule
        for rule in rules:
            if not self._limiter.hit(rule.item, *rule.key):
                return rule
        return None

    def _turn_in_s(self, rule: Rule) -> float:
        now = time.time()
        free_at = max(self._limiter.get_window_stats(rule.item, *rule.key).reset_time, now + MIN_WAIT_S)
        pace_s = rule.item.get_expiry() / rule.item.amount
        key = _turns_key(rule)
        if self._next_turn is not None:
            turn = float(self._next_turn(keys=[key], args=[repr(free_at), repr(pace_s), repr(now)]))
        else:
            turn, self._turns[key] = next_turn(self._turns.get(key, 0.0), free_at, pace_s)
        return turn - now

    def remaining(self, rule: Rule) -> int:
        """Slots left in the rule's window right now."""
        return int(self._limiter.get_window_stats(rule.item, *rule.key).remaining)

    def clear(self, rules: list[Rule]) -> None:
        """Empty the rules' windows and forget the turns given."""
        for rule in rules:
            self._limiter.clear(rule.item, *rule.key)
            self._turns.pop(_turns_key(rule), None)
            if self._redis is not None:
                self._redis.delete(_turns_key(rule))


def _turns_key(rule: Rule) -> str:
    return f"{NAMESPACE}:turns:{'/'.join(rule.key[1:])}:{rule.item.amount}/{rule.item.get_expiry()}"
