"""Tenants' tokens, reserved at admission and settled against what the work used: the estimate, and the
ledger's bookkeeping (the one-process ledger; the Redis one runs the same steps in scripts, through the
gateway's tests)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llm_router.gateway.quotas import LocalLedger, Refusal, Reservation, estimate_tokens

CHAT = [{"role": "user", "content": "x" * 40}]
ESTIMATES: list[tuple[Any, int]] = [
    # (a request, what it may spend)
    ({"kind": "generate", "prompt": "y" * 40, "max_tokens": 10}, 10 + 10),  # 40 bytes ≈ 10 tokens, then 10 made
    ({"kind": "generate", "prompt": "y" * 40}, 10 + 200),  # no max_tokens: the catalogue's default
    ({"kind": "generate", "messages": CHAT, "max_tokens": 5}, 32 + 8 + 10 + 5),  # a template, a message, its text
    ({"kind": "generate", "prompt": "é" * 4, "max_tokens": 1}, 2 + 1),  # bytes, not characters
    ({"kind": "embed", "input": ["a" * 8, "b" * 8]}, (2 + 2) * 2),  # each input and its special tokens
    ({"kind": "classify", "input": "c" * 8}, 2 + 2),
    ("not a request", 0),  # validation refuses it; it reserves nothing
    ({"kind": "generate", "prompt": "y", "max_tokens": True}, 1 + 200),  # not a count: the default
]


@pytest.mark.parametrize(("request_", "tokens"), ESTIMATES)
def test_what_a_request_may_spend(request_: Any, tokens: int) -> None:
    assert estimate_tokens(request_, default_max_tokens=200) == tokens


async def _rows(total: int) -> int:
    return total


def test_reservations_hold_the_budget_and_settle_against_what_was_used() -> None:
    async def scenario() -> None:
        ledger = LocalLedger()
        assert await ledger.reserve("t", 60, 1, 100, None, lambda: _rows(10)) is None  # 10 used before, 60 held
        assert await ledger.reserve("t", 40, 1, 100, None, lambda: _rows(10)) == Refusal("budget", 30)
        await ledger.attach(Reservation("t", 60, 1), "job:a", 60)
        await ledger.settle("t", "job:a", 25)  # it used 25 of the 60 it held
        assert await ledger.reserve("t", 65, 1, 100, None, lambda: _rows(10)) is None  # 10 + 25 + 65
        await ledger.release(Reservation("t", 65, 1))  # not submitted after all
        await ledger.settle("t", "job:a", 25)  # settled once: a second settle changes nothing
        assert ledger.used["t"] == 35

    asyncio.run(scenario())


def test_tokens_per_minute_count_in_their_window_and_a_repeat_reserves_nothing_more() -> None:
    async def scenario() -> None:
        ledger = LocalLedger()
        assert await ledger.reserve("t", 80, 7, None, 200, lambda: _rows(0)) is None
        await ledger.attach(Reservation("t", 80, 7), "job:a", 80)
        assert await ledger.reserve("t", 150, 7, None, 200, lambda: _rows(0)) == Refusal("tpm", 120)
        assert await ledger.reserve("t", 150, 8, None, 200, lambda: _rows(0)) is None  # the next minute
        # Two requests with one idempotency key, racing: both reserved, one job; the second gives its back.
        assert await ledger.reserve("t", 80, 7, None, 200, lambda: _rows(0)) is None
        await ledger.attach(Reservation("t", 80, 7), "job:a", 80)
        assert ledger.windows[("t", 7)] == 80
        await ledger.attach(Reservation("t", 150, 8), "batch:b", 10)  # some lines were refused: 140 given back
        assert ledger.windows[("t", 8)] == 10

    asyncio.run(scenario())


def test_the_budget_is_recounted_from_the_rows_only_with_nothing_in_flight() -> None:
    async def scenario() -> None:
        ledger = LocalLedger()
        await ledger.reserve("t", 10, 1, 100, None, lambda: _rows(0))
        await ledger.attach(Reservation("t", 10, 1), "job:a", 10)
        await ledger.recount("t", lambda: _rows(99))
        assert ledger.used["t"] == 10  # job:a is in flight: the rows do not know of it yet
        await ledger.settle("t", "job:a", 7)
        await ledger.recount("t", lambda: _rows(7))
        assert ledger.used["t"] == 7

    asyncio.run(scenario())
