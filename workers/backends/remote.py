"""What every remote backend shares: its HTTP caller, token counter, base URL and parameter mapping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.catalogue import Catalogue, GenerationDefaults
from tasks.errors import ConfigurationError
from tasks.schemas import Classification, ClassifyResult, Embedding, EmbedResult, GenerateRequest, LabelScore, Usage
from workers.backends.http import HttpCaller, unexpected
from workers.backends.usage import TokenCounter


@dataclass(frozen=True)
class RemoteDeps:
    caller: HttpCaller
    counter: TokenCounter
    catalogue: Catalogue
    default_base_url: str | None = None
    wait_for_model: bool = False

    def base_url(self, model_id: str) -> str:
        base = self.catalogue.model_spec(model_id).base_url or self.default_base_url
        if not base:
            raise ConfigurationError(f"models.{model_id!r}.base_url: the {self.caller.provider} provider needs one")
        return base.rstrip("/")


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


def embed_result(provider: str, model_id: str, body: Any, count: int, usage: Usage) -> EmbedResult:
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
    return EmbedResult(
        model=model_id, data=[Embedding(index=i, embedding=v) for i, v in enumerate(vectors)], usage=usage
    )


def classify_result(provider: str, model_id: str, body: Any, count: int, usage: Usage) -> ClassifyResult:
    """Labels from ``[[{label, score}]]`` (one list per input) or ``[{label, score}]`` for a single input."""
    if isinstance(body, list) and body and isinstance(body[0], dict) and count == 1:
        body = [body]
    if not isinstance(body, list) or len(body) != count:
        raise unexpected(provider, model_id, f"expected labels for {count} input(s)")
    data = []
    for index, labels in enumerate(body):
        try:
            ranked = sorted(
                (LabelScore(label=str(x["label"]), score=float(x["score"])) for x in labels),
                key=lambda item: item.score,
                reverse=True,
            )
        except (KeyError, TypeError, ValueError):
            raise unexpected(provider, model_id, "labels without label and score") from None
        data.append(Classification(index=index, labels=ranked))
    return ClassifyResult(model=model_id, labels=data[0].labels, data=data, usage=usage)
