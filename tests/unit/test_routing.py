"""Routing is pure: tier choice, the seed's auto rule, model lookup, and clear errors."""

from __future__ import annotations

import pytest

from llm_router.broker.catalogue import load_catalogue, parse_catalogue
from llm_router.broker.planning import plan
from llm_router.broker.queues import message_priority, tier_queues
from llm_router.broker.routing import auto_tier, chain_now, nearest_served_tier, route
from llm_router.tasks.cache import cache_key
from llm_router.tasks.errors import ConfigurationError, InvalidRequest
from llm_router.tasks.schemas import parse_request

CATALOGUE = load_catalogue(None)


@pytest.mark.parametrize(
    ("prompt_chars", "max_tokens", "tier"),
    [
        (99, 99, "fast"),  # both under the fast thresholds
        (100, 99, "balanced"),  # prompt reaches 100 characters
        (99, 100, "balanced"),  # max_tokens reaches 100
        (499, 299, "balanced"),  # just under the balanced thresholds
        (500, 50, "quality"),  # prompt reaches 500
        (50, 300, "quality"),  # max_tokens reaches 300
    ],
)
def test_auto_tier_follows_the_seed_thresholds(prompt_chars: int, max_tokens: int, tier: str) -> None:
    assert auto_tier(prompt_chars, max_tokens, CATALOGUE) == tier


def test_auto_uses_the_default_max_tokens_when_none_is_given() -> None:
    # The catalogue default (200) is under 300 but not under 100: a short prompt goes to balanced.
    assert route(parse_request({"kind": "generate", "prompt": "hi", "tier": "auto"}), CATALOGUE).tier == "balanced"


def test_tier_routes_to_its_queue_and_chain() -> None:
    planned = route(parse_request({"kind": "embed", "input": "x", "tier": "quality"}), CATALOGUE)
    assert (planned.tier, planned.queue) == ("quality", "quality")
    assert planned.chain == ("sentence-transformers/all-MiniLM-L6-v2",)


def test_default_tier_when_nothing_is_named() -> None:
    assert route(parse_request({"kind": "classify", "input": "x"}), CATALOGUE).tier == CATALOGUE.default_tier


def test_model_routes_to_the_first_tier_that_lists_it() -> None:
    planned = route(
        parse_request({"kind": "generate", "prompt": "x", "model": "HuggingFaceTB/SmolLM2-135M-Instruct"}), CATALOGUE
    )
    assert planned.tier == "fast" and planned.chain == ("HuggingFaceTB/SmolLM2-135M-Instruct",)


@pytest.mark.parametrize(
    ("request_data", "words"),
    [
        ({"kind": "generate", "prompt": "x", "tier": "premium"}, ["tier", "premium", "fast, balanced, quality, auto"]),
        ({"kind": "generate", "prompt": "x", "model": "gpt2"}, ["model", "gpt2", "SmolLM2"]),
        ({"kind": "embed", "input": "x", "model": "HuggingFaceTB/SmolLM2-135M-Instruct"}, ["model", "unknown"]),
    ],
)
def test_unknown_tiers_and_models_are_named(request_data: dict[str, object], words: list[str]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        route(parse_request(request_data), CATALOGUE)
    for word in words:
        assert word in str(caught.value)


def test_model_outside_the_named_tier_is_refused() -> None:
    catalogue = parse_catalogue(
        '[tiers.fast]\ngenerate = ["a/one"]\n'
        '[tiers.balanced]\ngenerate = ["a/two"]\n'
        '[tiers.quality]\ngenerate = ["a/two"]\n',
        "test.toml",
    )
    with pytest.raises(InvalidRequest, match="not in tier 'fast'; it is served by balanced, quality"):
        route(parse_request({"kind": "generate", "prompt": "x", "model": "a/two", "tier": "fast"}), catalogue)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[tiers.fast]\npool = 'tpu'\n", ["x.toml", "tiers.fast.pool"]),  # unknown pool
        ("tiers = 3\n", ["x.toml", "tiers"]),  # wrong shape
        ("[tiers.fast\n", ["x.toml", "not valid TOML"]),  # broken TOML
        ("default_tier = 'nope'\n[tiers.fast]\n[tiers.balanced]\n[tiers.quality]\n", ["default_tier", "nope"]),
        ("[tiers.fast]\nrequests_per_minute = 0\n", ["requests_per_minute"]),
        # a limit no window can count (it overflowed Redis on every job)
        ("[tiers.fast]\nrequests_per_minute = 100000000000000000000\n", ["tiers.fast.requests_per_minute"]),
        (
            "[providers.openai]\nrequests_per_hour = 100000000000\n[tiers.fast]\n",
            ["providers.openai.requests_per_hour"],
        ),
        # a tier named twice would escalate into itself forever
        ("tier_order = ['fast', 'fast']\n[tiers.fast]\n", ["tier_order", "'fast' more than once"]),
    ],
)
def test_bad_catalogue_names_file_key_and_reason(text: str, words: list[str]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_catalogue(text, "x.toml")
    for word in words:
        assert word in str(caught.value)


def test_the_shipped_hf_inference_catalogue_is_valid() -> None:
    from pathlib import Path

    catalogue = load_catalogue(Path(__file__).resolve().parents[2] / "ops" / "catalogues" / "hf-inference.toml")
    assert catalogue.tiers["fast"].generate == ["microsoft/DialoGPT-small", "gpt2"]
    assert catalogue.tiers["quality"].generate == ["microsoft/DialoGPT-large", "EleutherAI/gpt-neo-1.3B"]
    assert catalogue.downgrades is not None and catalogue.downgrades["gpt2-medium"] == "gpt2"
    for tier in catalogue.ordered_tiers:
        for kind in ("generate", "embed", "classify"):
            assert all(catalogue.model_spec(m).provider == "hf-inference" for m in catalogue.tiers[tier].chain(kind))


REDIS, RABBIT, EMBEDDED = "redis://127.0.0.1:6379/0", "amqp://guest@127.0.0.1//", "filesystem://"


@pytest.mark.parametrize(
    ("priority", "queue", "broker", "expected"),
    [
        (None, "fast", RABBIT, 0),  # unset is the lowest: RabbitMQ treats a message without one the same
        (9, "fast", RABBIT, 9),
        (5, "fast.bulk", RABBIT, None),  # bulk lanes are not priority queues
        (None, "fast", REDIS, 9),  # kombu's Redis steps are taken lowest first
        (9, "fast", REDIS, 0),
        (3, "fast", REDIS, 6),
        (None, "fast.bulk", REDIS, 9),  # the last step, after every interactive message of it
        (9, "fast", EMBEDDED, None),
    ],
)
def test_a_jobs_priority_becomes_its_brokers_message_priority(
    priority: int | None, queue: str, broker: str, expected: int | None
) -> None:
    assert message_priority(priority, queue, broker) == expected


def test_higher_priorities_come_first_on_redis_and_bulk_messages_after_every_interactive_one() -> None:
    order = [message_priority(p, "fast", REDIS) for p in range(10)]
    assert order == sorted(order, reverse=True)
    assert all(message_priority(None, "fast.bulk", REDIS) >= step for step in order if step is not None)  # type: ignore[operator]


def test_only_rabbitmq_interactive_lanes_are_declared_as_priority_queues() -> None:
    declared = {q.name: q.queue_arguments for q in tier_queues(CATALOGUE, RABBIT)}
    assert declared["fast"] == {"x-max-priority": 9}
    assert declared["fast.bulk"] is None
    assert all(q.queue_arguments is None for q in tier_queues(CATALOGUE, REDIS))


def test_priority_is_checked() -> None:
    with pytest.raises(InvalidRequest, match="priority"):
        parse_request({"kind": "embed", "input": "x", "priority": 10})
    assert parse_request({"kind": "embed", "input": "x", "priority": 9}).priority == 9


SERVED: list[tuple[str, frozenset[str], str]] = [
    # (the tier the guide's rule picks, the queues some worker consumes, where auto goes)
    ("quality", frozenset({"fast", "balanced", "quality"}), "quality"),
    ("quality", frozenset({"fast", "balanced"}), "balanced"),  # no GPU worker: the nearest served tier
    ("quality", frozenset({"fast.bulk"}), "fast"),  # a lane of it is served
    ("balanced", frozenset({"fast", "quality"}), "fast"),  # as near either way: the faster one
    ("fast", frozenset(), "fast"),  # nothing served: it stays, and waits for a worker
]


@pytest.mark.parametrize(("chosen", "served", "tier"), SERVED)
def test_auto_goes_to_the_nearest_tier_a_worker_serves(chosen: str, served: frozenset[str], tier: str) -> None:
    assert nearest_served_tier(chosen, "generate", CATALOGUE, served) == tier


def test_a_recorded_jobs_chain_is_read_from_the_catalogue_it_runs_with() -> None:
    named = parse_request({"kind": "generate", "prompt": "hi", "model": CATALOGUE.tiers["fast"].generate[0]})
    first = chain_now(named, "fast", CATALOGUE, moved=False)
    assert first.chain == (named.model,) and first.queue == "fast"
    # After a tier fallback the job runs the new tier's whole chain: the model it named belongs to its first tier.
    moved = chain_now(named, "balanced", CATALOGUE, moved=True)
    assert moved.chain == tuple(CATALOGUE.tiers["balanced"].generate)
    with pytest.raises(ConfigurationError, match="tier 'gone' is no longer in the catalogue"):
        chain_now(named, "gone", CATALOGUE, moved=False)
    unknown = parse_request({"kind": "generate", "prompt": "hi", "model": "org/removed"})
    with pytest.raises(ConfigurationError, match="model 'org/removed' is no longer in the catalogue"):
        chain_now(unknown, "fast", CATALOGUE, moved=False)


def test_planning_keys_the_cache_once_with_the_tenant_and_records_the_lane() -> None:
    request = parse_request({"kind": "embed", "input": "x", "tier": "quality"})
    planned = plan(request, CATALOGUE, tenant="acme")
    assert planned.cache_key == cache_key(request, "quality", "acme") != cache_key(request, "quality")
    interactive, bulk = planned.new_job("j1"), planned.new_job("j2", bulk=True)
    assert (interactive.queue, bulk.queue, bulk.tier, bulk.tenant) == ("quality", "quality.bulk", "quality", "acme")
    assert interactive.cache_key == planned.cache_key and interactive.request == planned.stored
    assert planned.stored["input"] == ["x"] and planned.stored["tier"] == "quality"
