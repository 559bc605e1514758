"""Pure pieces of routing: cache keys, tier order, cooldown decisions, usage arithmetic, --since."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llm_router.broker.catalogue import load_catalogue, parse_catalogue
from llm_router.cli.usage import parse_since
from llm_router.tasks.cache import cache_key
from llm_router.tasks.errors import (
    ModelFailed,
    ModelNotFound,
    NetworkError,
    RateLimited,
    RemoteRejected,
    ServerError,
    Unauthorised,
)
from llm_router.tasks.schemas import parse_request
from llm_router.tasks.store import percentile
from llm_router.workers.cooldown import LocalCooldowns, failing
from llm_router.workers.retry import RetryPolicy


def _key(routed: str = "fast", **fields: object) -> str:
    return cache_key(parse_request({"kind": "generate", "prompt": "hi", **fields}), routed)


def test_cache_key_ignores_handling_fields_but_not_parameters() -> None:
    assert _key() == _key(use_cache=False) == _key(batch_id="b-1") == _key(fallback="none")
    assert _key() != _key(max_tokens=5)  # a parameter changes the answer
    assert _key() != _key("balanced")  # so does the tier it was routed to
    assert _key("fast", tier="auto") == _key("fast", tier="fast") == _key("fast")  # however it got there
    assert _key() != cache_key(parse_request({"kind": "generate", "prompt": "hi!"}), "fast")
    embed = cache_key(parse_request({"kind": "embed", "input": "hi"}), "fast")
    assert embed == cache_key(parse_request({"kind": "embed", "input": ["hi"]}), "fast")  # one text = a list of one


def test_next_tier_skips_tiers_without_models_for_the_kind() -> None:
    catalogue = parse_catalogue(
        '[tiers.fast]\nembed = ["a/e"]\n[tiers.balanced]\ngenerate = ["a/g"]\n[tiers.quality]\nembed = ["a/q"]\n', "t"
    )
    assert catalogue.next_tier("fast", "embed") == "quality"  # balanced has no embed models
    assert catalogue.next_tier("quality", "embed") is None  # nowhere left
    assert load_catalogue(None).next_tier("fast", "generate") == "balanced"


POLICY = RetryPolicy(cooldown_s=60.0)


@pytest.mark.parametrize(
    ("failure", "cooldown", "counts"),
    [
        (Unauthorised("401"), 60.0, False),  # credentials refused: skip the model for a while
        (ModelNotFound("404"), 60.0, False),  # gone: likewise
        (RateLimited("429", retry_after_s=12.0), 12.0, True),  # the server says how long
        (RateLimited("429"), None, True),  # no hint: only the failure rate can cool it
        (ServerError("500"), None, True),
        (NetworkError("reset"), None, True),
        (ModelFailed("boom"), None, True),
        (RemoteRejected("422"), None, False),  # the input's fault, not the model's
    ],
)
def test_cooldown_decisions(failure: Exception, cooldown: float | None, counts: bool) -> None:
    assert POLICY.cooldown_s_for(failure) == cooldown  # type: ignore[arg-type]
    assert POLICY.counts_against_model(failure) == counts  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("calls", "failures", "expected"),
    [(3, 3, False), (4, 2, False), (4, 3, True), (10, 6, True), (10, 5, False)],  # > half, at least 4 calls
)
def test_failing_means_more_than_half_of_at_least_four_calls(calls: int, failures: int, expected: bool) -> None:
    assert failing(calls, failures, min_calls=4) is expected


def test_local_cooldowns_trip_and_expire() -> None:
    cooldowns = LocalCooldowns(min_calls=4)
    assert [cooldowns.record("m", ok) for ok in (True, False, False)] == [False, False, False]
    assert cooldowns.record("m", False) is True  # 3 of 4 failed
    cooldowns.cool("m", 0.05)
    assert cooldowns.remaining_s("m") > 0
    assert cooldowns.remaining_s("other") == 0


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([], 0.5, None), ([5.0], 0.95, 5.0), ([1, 2, 3, 4], 0.5, 2), ([float(i) for i in range(1, 101)], 0.95, 95.0)],
)
def test_percentile_nearest_rank(values: list[float], fraction: float, expected: float | None) -> None:
    assert percentile(values, fraction) == expected


def test_parse_since() -> None:
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_since("30m", now) == datetime(2026, 1, 2, 11, 30, tzinfo=UTC)
    assert parse_since("2d", now) == datetime(2025, 12, 31, 12, 0, tzinfo=UTC)
    assert parse_since("2026-01-01T00:00") == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(Exception, match="30m"):
        parse_since("yesterday")
