"""The ``echo`` provider: answers at once without a model (generation returns the prompt, embeddings a
fixed vector per text, classification a fixed label).

For measuring the cluster's own cost per job (``ops/bench/run.py``) and for checking a deployment end to end
before any model is installed. Catalogue entries opt in with ``provider = "echo"``.
"""

from __future__ import annotations

import hashlib

from llm_router.broker.catalogue import GenerationDefaults
from llm_router.tasks.schemas import (
    Classification,
    ClassifyRequest,
    ClassifyResult,
    Embedding,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    LabelScore,
    Usage,
)

DIMENSIONS = 8


def _words(text: str) -> int:
    return len(text.split())


def _usage(texts: list[str]) -> Usage:
    tokens = sum(map(_words, texts))
    return Usage(prompt_tokens=tokens, total_tokens=tokens)


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [byte / 255.0 for byte in digest[:DIMENSIONS]]


class EchoBackend:
    provider = "echo"

    def generate(self, model_id: str, request: GenerateRequest, defaults: GenerationDefaults) -> GenerateResult:
        text = request.prompt if request.prompt is not None else (request.messages or [])[-1].content
        tokens = _words(text)
        return GenerateResult(
            text=text,
            model=model_id,
            finish_reason="stop",
            usage=Usage(prompt_tokens=tokens, completion_tokens=tokens, total_tokens=2 * tokens),
        )

    def embed(self, model_id: str, request: EmbedRequest) -> EmbedResult:
        return self.embed_many(model_id, [request])[0]

    def embed_many(self, model_id: str, requests: list[EmbedRequest]) -> list[EmbedResult]:
        return [
            EmbedResult(
                model=model_id,
                data=[Embedding(index=i, embedding=_vector(text)) for i, text in enumerate(request.input)],
                usage=_usage(request.input),
            )
            for request in requests
        ]

    def classify(self, model_id: str, request: ClassifyRequest) -> ClassifyResult:
        return self.classify_many(model_id, [request])[0]

    def classify_many(self, model_id: str, requests: list[ClassifyRequest]) -> list[ClassifyResult]:
        labels = [LabelScore(label="ECHO", score=1.0)]
        return [
            ClassifyResult(
                model=model_id,
                labels=labels,
                data=[Classification(index=i, labels=labels) for i in range(len(request.input))],
                usage=_usage(request.input),
            )
            for request in requests
        ]
