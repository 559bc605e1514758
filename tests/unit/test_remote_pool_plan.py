"""The remote pool's plan, and how many inputs of many requests are cut into calls and handed back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llm_router.broker.catalogue import Catalogue
from llm_router.tasks.errors import ConfigurationError
from llm_router.tasks.schemas import EmbedRequest, Usage
from llm_router.workers.backends.http import PlannedCall
from llm_router.workers.backends.remote import CallAnswers, RemoteDeps, embed_results, in_calls, packed_calls
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


class _Sender:
    """Sends a planned call by answering it with its own payload (the texts), and keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def run(self, planned: PlannedCall[CallAnswers]) -> CallAnswers:
        self.sent.append(planned.payload)
        return planned.answer(planned.payload)


def _deps(tmp_path: Path, sender: _Sender | None = None) -> RemoteDeps:
    return RemoteDeps(caller=sender or _Sender(), counter=TokenCounter(tmp_path, None), catalogue=CATALOGUE)  # type: ignore[arg-type]


def _plan(answer: Callable[[list[str]], CallAnswers]) -> Callable[[list[str]], PlannedCall[CallAnswers]]:
    return lambda texts: PlannedCall("http://127.0.0.1:1/embed", texts, "org/tei", answer)


def test_inputs_of_many_requests_go_in_calls_of_the_models_size_and_come_back_in_order(tmp_path: Path) -> None:
    requests = [EmbedRequest(input=[f"r{r}-{i}" for i in range(n)]) for r, n in enumerate([3, 1, 5, 2])]
    sender = _Sender()
    plan = _plan(lambda texts: ([f"answer to {text}" for text in texts], Usage.of(99)))
    answered = in_calls(_deps(tmp_path, sender), "org/tei", requests, plan, provider_default=32)
    assert [len(texts) for texts in sender.sent] == [4, 4, 3]  # 11 inputs, 4 per call (the catalogue's limit)
    for request, (answers, usage) in zip(requests, answered, strict=True):
        assert answers == [f"answer to {text}" for text in request.input]
        assert usage.prompt_tokens != 99 and usage.estimated  # counted per request, not the shared call's


def test_one_request_in_one_call_keeps_the_servers_usage(tmp_path: Path) -> None:
    plan = _plan(lambda texts: (list(texts), Usage.of(7)))
    [(answers, usage)] = in_calls(_deps(tmp_path), "org/chat", [EmbedRequest(input=["a", "b"])], plan, 2048)
    assert answers == ["a", "b"] and usage.prompt_tokens == 7


def test_the_event_loops_packed_calls_answer_as_the_threads_calls_do(tmp_path: Path) -> None:
    deps = _deps(tmp_path)
    plan = _plan(lambda texts: ([[float(len(text))] for text in texts], Usage.of(5)))
    requests = [EmbedRequest(input=list(texts)) for texts in (["ab", "abc"], ["a"], list("abcde"), ["x", "y", "z"])]
    packed = packed_calls(deps, "org/tei", requests, plan, 32, embed_results)
    # Whole requests, at most the catalogue's 4 inputs a call; the one of 5 inputs is left to the threads' path.
    assert [planned.positions for planned in packed] == [[0, 1], [3]]
    for planned in packed:
        chosen = [requests[p] for p in planned.positions]
        assert planned.call.payload == [text for request in chosen for text in request.input]
        threads = embed_results("org/tei", in_calls(deps, "org/tei", chosen, plan, 32))
        assert planned.call.answer(planned.call.payload) == threads  # the server's usage only for a call of one
    assert packed[1].call.answer(["x", "y", "z"])[0].usage.prompt_tokens == 5
