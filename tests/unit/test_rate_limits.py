"""Turns for the jobs a full window refuses: given in order, at the pace the window frees its slots."""

from __future__ import annotations

import pytest

from llm_router.workers.rate_limits import WINDOW_MARGIN_S, RateLimiter, next_turn, window_rules


def test_a_turn_is_when_a_slot_frees_or_one_pace_after_the_last_turn_given() -> None:
    assert next_turn(0.0, 100.0, 2.0) == (100.0, 102.0)  # nobody waits: as soon as a slot frees
    assert next_turn(102.0, 100.0, 2.0) == (102.0, 104.0)  # one job waits already: one pace after its turn
    assert next_turn(90.0, 100.0, 2.0) == (100.0, 102.0)  # turns given long ago are past


def test_jobs_refused_by_a_full_window_come_back_one_pace_apart_in_the_order_refused() -> None:
    limiter = RateLimiter(None)
    rules = window_rules(("tier", "turns"), per_minute=5, per_hour=None)
    assert [limiter.acquire(rules) for _ in range(5)] == [0.0] * 5
    waits = [limiter.acquire(rules) for _ in range(3)]
    pace = (60 + WINDOW_MARGIN_S) / 5
    assert 60.0 < waits[0] <= 60 + WINDOW_MARGIN_S  # the first slot frees a minute (and its margin) after it was taken
    assert waits[1] - waits[0] == pytest.approx(pace, abs=0.05)
    assert waits[2] - waits[1] == pytest.approx(pace, abs=0.05)
    assert limiter.remaining(rules[0]) == 0  # a refusal takes no slot
    limiter.clear(rules)  # the windows emptied and the turns forgotten: the next refused job is first again
    assert [limiter.acquire(rules) for _ in range(5)] == [0.0] * 5
    assert 60.0 < limiter.acquire(rules) <= 60 + WINDOW_MARGIN_S


def test_a_try_gives_no_turn() -> None:
    limiter = RateLimiter(None)
    rules = window_rules(("tier", "tries"), per_minute=1, per_hour=None)
    assert limiter.try_acquire(rules) and not limiter.try_acquire(rules) and not limiter.try_acquire(rules)
    assert limiter.acquire(rules) <= 60 + WINDOW_MARGIN_S  # the first turn: nobody was given one before
