"""The remote pool's plan, and how many inputs of many requests are cut into calls and handed back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llm_router.broker.catalogue import Catalogue
from llm_router.tasks.errors import ConfigurationError
from llm_router.tasks.schemas import EmbedRequest, Usage
from llm_router.workers.backends.remote import CallAnswers, RemoteDeps, in_calls
from llm_router.workers.backends.usage import TokenCounter
from llm_router.workers.pools import REMOTE_CONCURRENCY, plan_pool

CATALOGUE = Catalogue.model_validate(
    {
        "tier_order": ["fast", "api"],
        "tiers": {
            "fast": {"embed": ["local/model"]},
            "api": {"pool": "remote", "embed": ["org/tei"], "generate": ["org/chat"]},
        },
        "models": {
            "org/tei": {"provider": "tei", "base_url": "http://127.0.0.1:1", "max_inputs_per_call": 4},
            "org/chat": {"provider": "openai", "base_url": "http://127.0.0.1:1"},
        },
    }
)


def test_the_remote_pool_runs_hundreds_of_threads_in_one_process() -> None:
    plan = plan_pool("remote", CATALOGUE)
    assert (plan.execution_pool, plan.concurrency, plan.queues) == ("threads", REMOTE_CONCURRENCY, ["api", "api.bulk"])
    assert plan.profile.pool == "remote" and not plan.profile.runs_models
    assert plan_pool("remote", CATALOGUE, concurrency=64).profile.concurrency == 64


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queues": ["fast"]}, "tiers.fast: the remote pool runs no local model"),  # local/model is local
        ({"concurrency": 0}, "--concurrency: the remote pool runs 1 to 2000"),
        ({"concurrency": 5000}, "--concurrency: the remote pool runs 1 to 2000"),
        ({"device": "cuda"}, "--device, --quantize"),
    ],
)
def test_the_remote_pool_refuses_what_it_cannot_do(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        plan_pool("remote", CATALOGUE, **options)


def _deps(tmp_path: Path) -> RemoteDeps:
    return RemoteDeps(caller=None, counter=TokenCounter(tmp_path, None), catalogue=CATALOGUE)  # type: ignore[arg-type]


def test_inputs_of_many_requests_go_in_calls_of_the_models_size_and_come_back_in_order(tmp_path: Path) -> None:
    requests = [EmbedRequest(input=[f"r{r}-{i}" for i in range(n)]) for r, n in enumerate([3, 1, 5, 2])]
    calls: list[list[str]] = []

    def call(texts: list[str]) -> CallAnswers:
        calls.append(texts)
        return [f"answer to {text}" for text in texts], Usage.of(99)

    answered = in_calls(_deps(tmp_path), "org/tei", requests, call, provider_default=32)
    assert [len(texts) for texts in calls] == [4, 4, 3]  # 11 inputs, 4 per call (the catalogue's limit)
    for request, (answers, usage) in zip(requests, answered, strict=True):
        assert answers == [f"answer to {text}" for text in request.input]
        assert usage.prompt_tokens != 99 and usage.estimated  # counted per request, not the shared call's


def test_one_request_in_one_call_keeps_the_servers_usage(tmp_path: Path) -> None:
    def call(texts: list[str]) -> CallAnswers:
        return list(texts), Usage.of(7)

    [(answers, usage)] = in_calls(_deps(tmp_path), "org/chat", [EmbedRequest(input=["a", "b"])], call, 2048)
    assert answers == ["a", "b"] and usage.prompt_tokens == 7
