"""What every remote backend shares: its HTTP caller, token counter, base URL and parameter mapping."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from llm_router.broker.catalogue import Catalogue, GenerationDefaults
from llm_router.tasks.errors import ConfigurationError
from llm_router.tasks.schemas import (
    Classification,
    ClassifyRequest,
    ClassifyResult,
    Embedding,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    LabelScore,
    Usage,
)
from llm_router.workers.backends.http import HttpCaller, PlannedCall, unexpected
from llm_router.workers.backends.usage import TokenCounter


@dataclass(frozen=True)
class RemoteDeps:
    caller: HttpCaller
    counter: TokenCounter
    catalogue: Catalogue
    default_base_url: str | None = None
    wait_for_model: bool = False

    def inputs_per_call(self, model_id: str, provider_default: int) -> int:
        return self.catalogue.model_spec(model_id).max_inputs_per_call or provider_default

    def base_url(self, model_id: str) -> str:
        base = self.catalogue.model_spec(model_id).base_url or self.default_base_url
        if not base:
            raise ConfigurationError(f"models.{model_id!r}.base_url: the {self.caller.provider} provider needs one")
        return base.rstrip("/")


class RemoteBackend:
    """What every remote backend is built on; its ``caller`` holds the tokens its planned calls are sent with."""

    provider: str

    def __init__(self, deps: RemoteDeps):
        self._deps = deps

    @property
    def caller(self) -> HttpCaller:
        return self._deps.caller


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float

    @classmethod
    def of(cls, request: GenerateRequest, defaults: GenerationDefaults) -> Sampling:
        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return cls(
            max_tokens=pick(request.max_tokens, defaults.max_tokens),
            temperature=pick(request.temperature, defaults.temperature),
            top_p=pick(request.top_p, defaults.top_p),
            top_k=pick(request.top_k, defaults.top_k),
            repetition_penalty=pick(request.repetition_penalty, defaults.repetition_penalty),
        )


R = TypeVar("R")
# What one HTTP call of many inputs gives back: one answer per input, and the call's usage when it says.
CallAnswers = tuple[list[Any], Usage | None]


def in_calls(
    deps: RemoteDeps,
    model_id: str,
    requests: list[EmbedRequest] | list[ClassifyRequest],
    plan: Callable[[list[str]], PlannedCall[CallAnswers]],
    provider_default: int,
) -> list[tuple[list[Any], Usage]]:
    """Send the inputs of many requests to one model in as few calls as it takes (``max_inputs_per_call``);
    returns each request's answers, in order, and its usage: the server's when one request went out in one
    call, else counted per request (a call's total cannot be split between the jobs that shared it).
    ``plan`` gives the call of some texts, whose answer is one per text (``vectors_of`` and ``labels_of`` check)."""
    texts = [text for request in requests for text in request.input]
    size = deps.inputs_per_call(model_id, provider_default)
    answers: list[Any] = []
    usage: Usage | None = None
    for start in range(0, len(texts), size):
        got, usage = deps.caller.run(plan(texts[start : start + size]))
        answers += got
    return _per_request(deps, model_id, requests, answers, usage if len(texts) <= size else None)


def _per_request(
    deps: RemoteDeps,
    model_id: str,
    requests: Sequence[EmbedRequest | ClassifyRequest],
    answers: list[Any],
    call_usage: Usage | None,
) -> list[tuple[list[Any], Usage]]:
    """Each request's answers, in order, and its usage: the call's when the call was this one request's alone."""
    shared_usage = call_usage if len(requests) == 1 else None
    results, start = [], 0
    for request in requests:
        count = len(request.input)
        results.append(
            (answers[start : start + count], shared_usage or deps.counter.usage(model_id, list(request.input)))
        )
        start += count
    return results


@dataclass(frozen=True)
class Planned:
    """One call that answers some of the requests given to a backend's ``plan``: their positions in that list,
    and the call, whose answer is their results in the same order."""

    positions: list[int]
    call: PlannedCall[list[Any]]


def packed_calls(
    deps: RemoteDeps,
    model_id: str,
    requests: Sequence[EmbedRequest | ClassifyRequest],
    plan: Callable[[list[str]], PlannedCall[CallAnswers]],
    provider_default: int,
    results: Callable[[str, list[tuple[list[Any], Usage]]], Sequence[Any]],
) -> list[Planned]:
    """The requests' inputs packed whole into as few calls as ``max_inputs_per_call`` allows, each answered as
    ``in_calls`` answers; a request with more inputs than one call takes is left out (the threads' path sends
    it in several)."""
    size = deps.inputs_per_call(model_id, provider_default)
    packs: list[list[int]] = []
    filled = size
    for position, request in enumerate(requests):
        count = len(request.input)
        if count > size:
            continue
        if filled + count > size:
            packs.append([])
            filled = 0
        packs[-1].append(position)
        filled += count
    return [_packed(deps, model_id, [requests[p] for p in pack], pack, plan, results) for pack in packs]


def _packed(
    deps: RemoteDeps,
    model_id: str,
    chosen: list[EmbedRequest | ClassifyRequest],
    positions: list[int],
    plan: Callable[[list[str]], PlannedCall[CallAnswers]],
    results: Callable[[str, list[tuple[list[Any], Usage]]], Sequence[Any]],
) -> Planned:
    planned = plan([text for request in chosen for text in request.input])

    def answer(body: Any) -> list[Any]:
        got, usage = planned.answer(body)
        return list(results(model_id, _per_request(deps, model_id, chosen, got, usage)))

    return Planned(positions, PlannedCall(planned.url, planned.payload, planned.model_id, answer, planned.headers))


def one_each(requests: Sequence[Any], plan: Callable[[Any], PlannedCall[Any] | None]) -> list[Planned]:
    """A call of its own for each request that ``plan`` plans (generations: one completion per call)."""
    planned = []
    for position, request in enumerate(requests):
        call = plan(request)
        if call is not None:
            planned.append(Planned([position], _listed(call)))
    return planned


def _listed(call: PlannedCall[Any]) -> PlannedCall[list[Any]]:
    answer = call.answer
    return PlannedCall(call.url, call.payload, call.model_id, lambda body: [answer(body)], call.headers)


def embed_results(model_id: str, answered: list[tuple[list[Any], Usage]]) -> list[EmbedResult]:
    return [
        EmbedResult(model=model_id, data=[Embedding(index=i, embedding=v) for i, v in enumerate(vectors)], usage=usage)
        for vectors, usage in answered
    ]


def classify_results(model_id: str, answered: list[tuple[list[Any], Usage]]) -> list[ClassifyResult]:
    results = []
    for labels, usage in answered:
        data = [Classification(index=i, labels=ranked) for i, ranked in enumerate(labels)]
        results.append(ClassifyResult(model=model_id, labels=data[0].labels, data=data, usage=usage))
    return results


def vectors_of(provider: str, model_id: str, body: Any, count: int) -> list[list[float]]:
    """Vectors from a list per input; token-level vectors (a list of lists per input) are mean-pooled."""
    if not isinstance(body, list) or len(body) != count:
        raise unexpected(provider, model_id, f"expected {count} vectors")
    vectors = []
    for item in body:
        if item and isinstance(item[0], list):
            width = len(item[0])
            item = [sum(token[i] for token in item) / len(item) for i in range(width)]
        if not item or not all(isinstance(x, (int, float)) for x in item):
            raise unexpected(provider, model_id, "a vector that is not a list of numbers")
        vectors.append([float(x) for x in item])
    return vectors


def labels_of(provider: str, model_id: str, body: Any, count: int) -> list[list[LabelScore]]:
    """Labels, best first, from ``[[{label, score}]]`` (one list per input) or ``[{label, score}]`` for one."""
    if isinstance(body, list) and body and isinstance(body[0], dict) and count == 1:
        body = [body]
    if not isinstance(body, list) or len(body) != count:
        raise unexpected(provider, model_id, f"expected labels for {count} input(s)")
    data = []
    for labels in body:
        try:
            ranked = sorted(
                (LabelScore(label=str(x["label"]), score=float(x["score"])) for x in labels),
                key=lambda item: item.score,
                reverse=True,
            )
        except (KeyError, TypeError, ValueError):
            raise unexpected(provider, model_id, "labels without label and score") from None
        data.append(ranked)
    return data
