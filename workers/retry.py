"""What happens to a job after a failure, decided by pure functions that return a ``Decision``. No I/O, no
clocks; ``llm_router.workers.execution`` only carries the decision out and records it.

After one failure, ``RetryPolicy.decide`` (failure, retries of this model so far):

    ModelLoading (503)           retry (on the downgraded model if mapped)  min(30, 5·(n+1)), or estimated_time ≤ 30
    RateLimited (429)            retry                                       min(60, 2ⁿ), or Retry-After ≤ 300
    ServerError (other 5xx)      retry                                       min(10, n+1)
    NetworkError                 retry                                       min(10, n+1)
    ModelNotFound, ModelFailed   the next model of the chain
    Unauthorised, RemoteRejected, InvalidRequest: fail the job now

Delays are in seconds before attempt n+1, n counted from 0 per model. After ``max_retries`` retries
of one model, the next model of the chain is tried.

Once every model of the tier's chain was tried or passed over, ``after_chain``: the next tier when the request
allows it and hops are left; else, when every model was only cooling down, wait for the first to come back;
else fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from llm_router.tasks.errors import (
    ModelFailed,
    ModelLoading,
    ModelNotFound,
    RateLimited,
    RemoteRejected,
    RouterError,
    TransientError,
    Unauthorised,
)

# The seed's "smaller model" map, used when a model is still loading (HTTP 503).
DEFAULT_DOWNGRADES: dict[str, str] = {
    "microsoft/DialoGPT-large": "microsoft/DialoGPT-medium",
    "microsoft/DialoGPT-medium": "microsoft/DialoGPT-small",
    "gpt2-large": "gpt2-medium",
    "gpt2-medium": "gpt2",
}


class Action(StrEnum):
    RETRY = "retry"  # the same model (or its downgrade) again, after delay_s
    NEXT_MODEL = "next_model"  # the next model of the tier's chain, now
    NEXT_TIER = "next_tier"  # the next tier's chain, from its first model, now
    WAIT = "wait"  # every model is cooling down: the chain again once the first is back, after delay_s
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    model: str | None = None  # retry: the model it runs on, when it changes (a downgrade)
    tier: str | None = None  # next_tier: the tier the job moves to
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    loading_step_s: float = 5.0
    loading_cap_s: float = 30.0
    rate_limited_base_s: float = 1.0
    rate_limited_cap_s: float = 60.0
    retry_after_cap_s: float = 300.0
    other_step_s: float = 1.0
    other_cap_s: float = 10.0
    downgrade_on_loading: bool = True
    cooldown_s: float = 60.0
    downgrades: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DOWNGRADES))

    def delay_s(self, failure: TransientError, retry: int) -> float:
        """Seconds to wait before the next attempt, after ``retry`` earlier retries of this model."""
        hint = failure.retry_after_s
        if isinstance(failure, ModelLoading):
            if hint is not None:
                return max(0.0, min(self.loading_cap_s, hint))
            return min(self.loading_cap_s, self.loading_step_s * (retry + 1))
        if isinstance(failure, RateLimited):
            if hint is not None:
                return max(0.0, min(self.retry_after_cap_s, hint))
            return min(self.rate_limited_cap_s, self.rate_limited_base_s * 2**retry)
        return min(self.other_cap_s, self.other_step_s * (retry + 1))

    def decide(self, failure: RouterError, retry: int, model: str) -> Decision:
        """Retry, the next model, or fail, after ``failure`` of ``model`` that had ``retry`` retries."""
        if isinstance(failure, TransientError):
            if retry >= self.max_retries:
                return Decision(Action.NEXT_MODEL, reason=f"{self.max_retries} retries spent")
            target = None
            if isinstance(failure, ModelLoading) and self.downgrade_on_loading:
                target = self.downgrades.get(model)
            return Decision(Action.RETRY, self.delay_s(failure, retry), target, reason=type(failure).__name__)
        if isinstance(failure, (ModelNotFound, ModelFailed)):
            return Decision(Action.NEXT_MODEL, reason=type(failure).__name__)
        return Decision(Action.FAIL, reason=type(failure).__name__)

    def cooldown_s_for(self, failure: RouterError) -> float | None:
        """How long this one failure cools the model down cluster-wide; None when it alone does not."""
        if isinstance(failure, (Unauthorised, ModelNotFound)):
            return self.cooldown_s
        if isinstance(failure, RateLimited) and failure.retry_after_s is not None:
            return min(self.retry_after_cap_s, failure.retry_after_s)
        return None

    @staticmethod
    def counts_against_model(failure: RouterError) -> bool:
        """Whether a failure says something about the model's health (not about the input)."""
        return not isinstance(failure, RemoteRejected) and isinstance(failure, (TransientError, ModelFailed))


def after_chain(
    *, fallback: str, next_tier: str | None, tier_hops: int, max_tier_hops: int, cooling_s: list[float], tried: int
) -> Decision:
    """Next tier, wait, or fail, once the chain is spent. ``cooling_s`` holds one entry per model passed over
    because it was cooling down; ``tried`` counts every model of the chain, tried or passed over."""
    if fallback == "tier" and next_tier is not None and tier_hops < max_tier_hops:
        return Decision(Action.NEXT_TIER, tier=next_tier, reason="chain spent")
    if cooling_s and len(cooling_s) == tried:
        return Decision(Action.WAIT, delay_s=min(cooling_s), reason="every model is cooling down")
    return Decision(Action.FAIL, reason="chain spent")
