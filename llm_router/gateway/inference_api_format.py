"""Translating between the Hugging Face Inference API's JSON (what ``huggingface_hub.InferenceClient`` sends to
``/models/{model}`` and its pipeline routes) and our requests and results. Pure functions.

The API chooses a task by the model's pipeline tag; here the catalogue says which kinds of job a model (or a
tier) runs, the route may name the task (``/models/{model}/pipeline/{task}``), and the payload's shape settles
the rest: text generation sends ``stream``, sentence similarity a ``source_sentence``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from llm_router.broker.catalogue import Catalogue
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.schemas import ClassifyResult, EmbedResult, GenerateResult, Kind

Task = Literal["text-generation", "feature-extraction", "sentence-similarity", "text-classification"]
KIND_OF: dict[Task, Kind] = {
    "text-generation": "generate",
    "feature-extraction": "embed",
    "sentence-similarity": "embed",
    "text-classification": "classify",
}
CHAT_SUFFIXES = ("/v1/chat/completions", "/chat/completions")
PIPELINE = "/pipeline/"
# text-generation parameters that map onto ours (their name → ours).
_GENERATION = {
    "max_new_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
    "stop": "stop",
}
_GENERATION_OWN = {"return_full_text", "do_sample"}  # understood here, not passed on
_CLASSIFICATION = {"top_k", "function_to_apply"}
_EMBEDDING = {"normalize", "truncate", "truncation_direction", "prompt_name"}


@dataclass(frozen=True)
class Route:
    """What ``/models/{path}`` names: a model or tier, the task when the path says it, or the chat route."""

    target: str
    task: Task | None = None
    chat: bool = False

    @classmethod
    def of(cls, path: str) -> Route:
        path = path.strip("/")
        for suffix in CHAT_SUFFIXES:
            if f"/{path}".endswith(suffix):
                return cls(f"/{path}".removesuffix(suffix).strip("/"), chat=True)
        if PIPELINE in f"/{path}":
            target, _, task = f"/{path}".rpartition(PIPELINE)
            if task not in KIND_OF:
                raise InvalidRequest(f"task: {task!r} is not served here; one of {', '.join(KIND_OF)}", field="task")
            return cls(target.strip("/"), task)  # type: ignore[arg-type]
        return cls(path)

    def request_target(self, catalogue: Catalogue) -> dict[str, str]:
        """A tier's name selects the tier; anything else names a model of the catalogue."""
        if not self.target:
            raise InvalidRequest("model: the path names no model (/models/{model})", field="model")
        return {"tier": self.target} if self.target in catalogue.tiers else {"model": self.target}


def kinds_of(target: str, catalogue: Catalogue) -> list[Kind]:
    """The kinds of job a tier or a model of the catalogue runs."""
    kinds: list[Kind] = ["generate", "embed", "classify"]
    if target in catalogue.tiers:
        return [kind for kind in kinds if catalogue.tiers[target].chain(kind)]
    return [kind for kind in kinds if catalogue.tiers_serving(target, kind)]


def task_of(route: Route, body: dict[str, Any], catalogue: Catalogue) -> Task:
    """The task a call asks for: the route's, else the one the payload's shape and the model's kinds leave."""
    if route.task is not None:
        return route.task
    kinds = kinds_of(route.target, catalogue)
    if not kinds:
        raise InvalidRequest(f"model: no tier of the catalogue runs {route.target!r}", field="model")
    inputs = body.get("inputs")
    if "stream" in body and "generate" in kinds:
        return "text-generation"
    if isinstance(inputs, dict) and "source_sentence" in inputs and "embed" in kinds:
        return "sentence-similarity"
    if len(kinds) > 1:
        tasks = ", ".join(task for task, kind in KIND_OF.items() if kind in kinds)
        raise InvalidRequest(
            f"task: {route.target!r} runs more than one task ({tasks}); name one as /models/{route.target}/pipeline/"
            "{task}",
            field="task",
        )
    return {"generate": "text-generation", "embed": "feature-extraction", "classify": "text-classification"}[kinds[0]]  # type: ignore[return-value]


def _parameters(body: dict[str, Any], known: set[str], *, model_kwargs: bool = False) -> dict[str, Any]:
    """The payload's parameters, none of them unknown (a text-generation refusal is worded as the API words it,
    so that ``InferenceClient`` drops those parameters and asks again)."""
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequest("parameters: an object", field="parameters")
    given = {name: value for name, value in parameters.items() if value is not None}
    unknown = sorted(set(given) - known)
    if unknown and model_kwargs:
        raise InvalidRequest(
            f"The following `model_kwargs` are not used by the model: {unknown} (parameters: not supported here)",
            field="parameters",
        )
    if unknown:
        raise InvalidRequest(f"parameters.{unknown[0]}: not supported here", field="parameters")
    return given


def _text(value: Any, field: str = "inputs") -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}: a string", field=field)
    return value


def generation_request(route: Route, body: dict[str, Any], catalogue: Catalogue) -> dict[str, Any]:
    """A text-generation payload as our generate job (``stream`` asks for server-sent tokens)."""
    given = _parameters(body, set(_GENERATION) | _GENERATION_OWN, model_kwargs=True)
    request: dict[str, Any] = {
        "kind": "generate",
        "prompt": _text(body.get("inputs")),
        **route.request_target(catalogue),
    }
    for theirs, ours in _GENERATION.items():
        if theirs in given:
            request[ours] = [given[theirs]] if theirs == "stop" and isinstance(given[theirs], str) else given[theirs]
    if given.get("do_sample") is False:
        request["temperature"] = 0.0  # greedy, as the API's do_sample=false
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("stream: true or false", field="stream")
    request["stream"] = stream
    return request


def return_full_text(body: dict[str, Any]) -> bool:
    return bool((body.get("parameters") or {}).get("return_full_text"))


def embedding_request(route: Route, body: dict[str, Any], catalogue: Catalogue) -> dict[str, Any]:
    """A feature-extraction payload (one text or a list) as our embed job."""
    given = _parameters(body, _EMBEDDING)
    if given.get("normalize") is False:
        raise InvalidRequest("parameters.normalize: only true (the vectors are normalised)", field="parameters")
    inputs = body.get("inputs")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise InvalidRequest("inputs: a string or a non-empty list of strings", field="inputs")
    return {"kind": "embed", "input": texts, **route.request_target(catalogue)}


def similarity_request(route: Route, body: dict[str, Any], catalogue: Catalogue) -> dict[str, Any]:
    """A sentence-similarity payload as one embed job of the source sentence and then the others."""
    _parameters(body, set())
    inputs = body.get("inputs")
    if not isinstance(inputs, dict):
        raise InvalidRequest("inputs: {source_sentence, sentences}", field="inputs")
    source = _text(inputs.get("source_sentence"), "inputs.source_sentence")
    sentences = inputs.get("sentences")
    if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) for s in sentences):
        raise InvalidRequest("inputs.sentences: a non-empty list of strings", field="inputs.sentences")
    return {"kind": "embed", "input": [source, *sentences], **route.request_target(catalogue)}


def classification_request(route: Route, body: dict[str, Any], catalogue: Catalogue) -> dict[str, Any]:
    given = _parameters(body, _CLASSIFICATION)
    if given.get("function_to_apply") not in (None, "softmax"):
        raise InvalidRequest("parameters.function_to_apply: only softmax", field="parameters")
    return {"kind": "classify", "input": [_text(body.get("inputs"))], **route.request_target(catalogue)}


def top_k(body: dict[str, Any]) -> int | None:
    value = (body.get("parameters") or {}).get("top_k")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InvalidRequest("parameters.top_k: a whole number of at least 1", field="parameters")
    return value


def generated(result: GenerateResult, prompt: str, full_text: bool) -> list[dict[str, str]]:
    return [{"generated_text": prompt + result.text if full_text else result.text}]


def vectors(result: EmbedResult) -> list[list[float]]:
    return [item.embedding for item in sorted(result.data, key=lambda item: item.index)]


def similarities(result: EmbedResult) -> list[float]:
    """Cosine similarity of the source sentence (the first vector) with each of the others."""
    source, *others = vectors(result)
    return [_cosine(source, other) for other in others]


def _cosine(a: list[float], b: list[float]) -> float:
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norms if norms else 0.0


def labels(result: ClassifyResult, most: int | None) -> list[list[dict[str, Any]]]:
    """The API's answer for one text: a list (one per input) of labels with scores, best first."""
    ranked = sorted(result.labels, key=lambda item: item.score, reverse=True)
    return [[{"label": item.label, "score": item.score} for item in ranked[:most]]]


def token_event(index: int, text: str, generated_text: str | None = None) -> dict[str, Any]:
    """One server-sent event of a streamed text generation, as TGI sends it; the last one carries the text."""
    return {
        "index": index,
        "token": {"id": 0, "text": text, "logprob": 0.0, "special": generated_text is not None},
        "generated_text": generated_text,
        "details": None,
    }


def error_body(message: str, estimated_time: float | None = None) -> dict[str, Any]:
    """The API's error object; a 503 for a model not yet loaded says how long to wait."""
    body: dict[str, Any] = {"error": message}
    if estimated_time is not None:
        body["estimated_time"] = estimated_time
    return body
