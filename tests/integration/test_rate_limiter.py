"""The moving-window limiter on the real Redis: no window ever holds more than the limit."""

from __future__ import annotations

import itertools

import pytest

from llm_router.workers.rate_limits import WINDOW_MARGIN_S, RateLimiter, window_rules

URL = "redis://127.0.0.1:6379/15"


def test_moving_window_grants_the_limit_then_names_the_wait() -> None:
    limiter = RateLimiter(URL)
    rules = window_rules(("tier", "unit"), per_minute=5, per_hour=100)
    limiter.clear(rules)
    assert [limiter.acquire(rules) for _ in range(5)] == [0.0] * 5
    wait = limiter.acquire(rules)
    assert 55.0 < wait <= 60 + WINDOW_MARGIN_S  # the first hit leaves the window in a minute and its margin
    # A refused call spends no slot: the hour window holds exactly the 5 granted calls,
    # and another limiter (another process) sees the same windows.
    other = RateLimiter(URL)
    minute, hour = rules
    assert other.remaining(hour) == 95 and other.remaining(minute) == 0
    assert other.acquire(rules) > 0.0 and other.remaining(hour) == 95
    limiter.clear(rules)


def test_provider_keys_have_windows_of_their_own() -> None:
    limiter = RateLimiter(URL)
    a = window_rules(("provider", "hf-inference", "key-a"), per_minute=1, per_hour=None)
    b = window_rules(("provider", "hf-inference", "key-b"), per_minute=1, per_hour=None)
    limiter.clear(a + b)
    assert limiter.acquire(a) == 0.0 and limiter.acquire(b) == 0.0
    assert limiter.acquire(a) > 0.0
    limiter.clear(a + b)


def test_turns_are_shared_by_every_process() -> None:
    first, second = RateLimiter(URL), RateLimiter(URL)
    rules = window_rules(("tier", "turns"), per_minute=4, per_hour=None)
    first.clear(rules)
    assert [first.acquire(rules) for _ in range(4)] == [0.0] * 4
    waits = [limiter.acquire(rules) for limiter in (first, second, first, second)]
    pace = (60 + WINDOW_MARGIN_S) / 4
    assert 55.0 < waits[0] <= 60 + WINDOW_MARGIN_S
    # Each process's refused job queues behind the other's: one pace apart, whoever gave the turn.
    gaps = [later - earlier for earlier, later in itertools.pairwise(waits)]
    assert gaps == pytest.approx([pace] * 3, abs=0.05)
    first.clear(rules)
    assert [second.acquire(rules) for _ in range(4)] == [0.0] * 4
    assert second.acquire(rules) <= 60 + WINDOW_MARGIN_S  # the turns were forgotten with the window
    first.clear(rules)
