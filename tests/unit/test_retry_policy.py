"""The retry policy's table, unscaled: the seed's formulas, hints, caps and the downgrade map."""

from __future__ import annotations

import pytest

from llm_router.tasks.errors import (
    InvalidRequest,
    ModelFailed,
    ModelLoading,
    ModelNotFound,
    NetworkError,
    RateLimited,
    RemoteRejected,
    RouterError,
    ServerError,
    Unauthorised,
)
from llm_router.workers.retry import Action, RetryPolicy, after_chain

POLICY = RetryPolicy()
MODEL = "org/model"

TABLE: list[tuple[RouterError, int, str, str, float, str | None]] = [
    # (failure, retries so far, model, action, delay, model to retry on)
    (ModelLoading("503"), 0, MODEL, "retry", 5.0, None),  # 5 s·(n+1)
    (ModelLoading("503"), 1, MODEL, "retry", 10.0, None),
    (ModelLoading("503"), 2, MODEL, "retry", 15.0, None),
    (ModelLoading("503", retry_after_s=7.5), 0, MODEL, "retry", 7.5, None),  # estimated_time wins
    (ModelLoading("503", retry_after_s=120), 0, MODEL, "retry", 30.0, None),  # ... capped at 30 s
    (ModelLoading("503"), 3, MODEL, "next_model", 0.0, None),  # max_retries (3) spent
    (ModelLoading("503"), 0, "microsoft/DialoGPT-large", "retry", 5.0, "microsoft/DialoGPT-medium"),  # downgrade
    (ModelLoading("503"), 1, "microsoft/DialoGPT-medium", "retry", 10.0, "microsoft/DialoGPT-small"),
    (ModelLoading("503"), 0, "gpt2-large", "retry", 5.0, "gpt2-medium"),
    (ModelLoading("503"), 0, "gpt2-medium", "retry", 5.0, "gpt2"),
    (ModelLoading("503"), 0, "gpt2", "retry", 5.0, None),  # the smallest has nowhere to go
    (RateLimited("429"), 0, MODEL, "retry", 1.0, None),  # 1 s·2ⁿ
    (RateLimited("429"), 1, MODEL, "retry", 2.0, None),
    (RateLimited("429"), 2, MODEL, "retry", 4.0, None),
    (RateLimited("429", retry_after_s=2), 0, MODEL, "retry", 2.0, None),  # Retry-After wins
    (RateLimited("429", retry_after_s=2), 2, MODEL, "retry", 2.0, None),  # ... at any attempt
    (RateLimited("429", retry_after_s=900), 0, MODEL, "retry", 300.0, None),  # ... capped at 300 s
    (ServerError("500"), 0, MODEL, "retry", 1.0, None),  # 1 s·(n+1)
    (ServerError("502"), 2, MODEL, "retry", 3.0, None),
    (NetworkError("reset"), 1, MODEL, "retry", 2.0, None),
    (NetworkError("timeout"), 3, MODEL, "next_model", 0.0, None),
    (ModelNotFound("404"), 0, MODEL, "next_model", 0.0, None),  # 404 moves down the chain
    (ModelFailed("boom"), 0, MODEL, "next_model", 0.0, None),
    (Unauthorised("401"), 0, MODEL, "fail", 0.0, None),  # no retry, no other model
    (RemoteRejected("422"), 0, MODEL, "fail", 0.0, None),
    (InvalidRequest("bad"), 0, MODEL, "fail", 0.0, None),
]


@pytest.mark.parametrize(("failure", "retry", "model", "action", "delay", "target"), TABLE)
def test_policy_table(
    failure: RouterError, retry: int, model: str, action: str, delay: float, target: str | None
) -> None:
    decision = POLICY.decide(failure, retry, model)
    assert (decision.action, decision.delay_s, decision.model) == (action, delay, target)


@pytest.mark.parametrize(
    ("retry", "expected"),
    [(0, 1.0), (3, 8.0), (5, 32.0), (6, 60.0), (10, 60.0)],  # 429 backoff caps at 60 s
)
def test_rate_limited_backoff_caps_at_sixty_seconds(retry: int, expected: float) -> None:
    assert RetryPolicy(max_retries=20).delay_s(RateLimited("429"), retry) == expected


@pytest.mark.parametrize(("retry", "expected"), [(0, 5.0), (5, 30.0), (9, 30.0)])  # 503 caps at 30 s
def test_loading_caps_at_thirty_seconds(retry: int, expected: float) -> None:
    assert RetryPolicy(max_retries=20).delay_s(ModelLoading("503"), retry) == expected


def test_downgrade_can_be_switched_off_or_remapped() -> None:
    assert RetryPolicy(downgrade_on_loading=False).decide(ModelLoading("503"), 0, "gpt2-large").model is None
    custom = RetryPolicy(downgrades={"a/big": "a/small"})
    assert custom.decide(ModelLoading("503"), 0, "a/big").model == "a/small"
    assert custom.decide(ModelLoading("503"), 0, "gpt2-large").model is None


CHAIN_ENDS: list[tuple[str, str | None, int, list[float], int, tuple[Action, str | None, float]]] = [
    # (fallback, next tier, hops so far, cooldowns of the models passed over, models tried, what follows)
    ("tier", "balanced", 0, [], 2, (Action.NEXT_TIER, "balanced", 0.0)),
    ("tier", "balanced", 1, [12.0, 3.0], 2, (Action.NEXT_TIER, "balanced", 0.0)),  # escalation first
    ("tier", "balanced", 2, [], 2, (Action.FAIL, None, 0.0)),  # hops spent (max 2)
    ("tier", None, 0, [], 1, (Action.FAIL, None, 0.0)),  # the last tier
    ("tier", None, 0, [12.0, 3.0], 2, (Action.WAIT, None, 3.0)),  # all cooling: the first back
    ("model", "balanced", 0, [12.0, 3.0], 2, (Action.WAIT, None, 3.0)),  # no tier fallback asked
    ("model", "balanced", 0, [12.0], 2, (Action.FAIL, None, 0.0)),  # one really failed: no wait
    ("none", "balanced", 0, [], 1, (Action.FAIL, None, 0.0)),
]


@pytest.mark.parametrize(("fallback", "next_tier", "hops", "cooling", "tried", "expected"), CHAIN_ENDS)
def test_after_the_chain(
    fallback: str,
    next_tier: str | None,
    hops: int,
    cooling: list[float],
    tried: int,
    expected: tuple[Action, str | None, float],
) -> None:
    end = after_chain(
        fallback=fallback, next_tier=next_tier, tier_hops=hops, max_tier_hops=2, cooling_s=cooling, tried=tried
    )
    assert (end.action, end.tier, end.delay_s) == expected
