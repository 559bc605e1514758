"""The ``tei`` backend: Text Embeddings Inference — ``POST {base}/embed`` and ``POST {base}/predict``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, cast

from llm_router.broker.catalogue import GenerationDefaults
from llm_router.tasks.errors import ModelNotFound
from llm_router.tasks.schemas import (
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
)
from llm_router.workers.backends.base import Request
from llm_router.workers.backends.http import PlannedCall
from llm_router.workers.backends.remote import (
    CallAnswers,
    Planned,
    RemoteBackend,
    classify_results,
    embed_results,
    in_calls,
    labels_of,
    packed_calls,
    vectors_of,
)

# TEI's own default for max_client_batch_size.
INPUTS_PER_CALL = 32


class TeiBackend(RemoteBackend):
    provider = "tei"

    def generate(self, model_id: str, request: GenerateRequest, defaults: GenerationDefaults) -> GenerateResult:
        raise ModelNotFound(f"the tei provider does not generate text (model {model_id})")

    def embed(self, model_id: str, request: EmbedRequest) -> EmbedResult:
        return self.embed_many(model_id, [request])[0]

    def embed_many(self, model_id: str, requests: list[EmbedRequest]) -> list[EmbedResult]:
        plan = partial(self._embed_call, model_id)
        return embed_results(model_id, in_calls(self._deps, model_id, requests, plan, INPUTS_PER_CALL))

    def classify(self, model_id: str, request: ClassifyRequest) -> ClassifyResult:
        return self.classify_many(model_id, [request])[0]

    def classify_many(self, model_id: str, requests: list[ClassifyRequest]) -> list[ClassifyResult]:
        plan = partial(self._classify_call, model_id)
        return classify_results(model_id, in_calls(self._deps, model_id, requests, plan, INPUTS_PER_CALL))

    def plan(self, model_id: str, requests: Sequence[Request], defaults: GenerationDefaults) -> list[Planned]:
        if not requests or isinstance(requests[0], GenerateRequest):
            return []  # refused by generate() on the threads' path
        texts = cast(Sequence[EmbedRequest | ClassifyRequest], requests)
        if isinstance(texts[0], EmbedRequest):
            plan = partial(self._embed_call, model_id)
            return packed_calls(self._deps, model_id, texts, plan, INPUTS_PER_CALL, embed_results)
        plan = partial(self._classify_call, model_id)
        return packed_calls(self._deps, model_id, texts, plan, INPUTS_PER_CALL, classify_results)

    def _embed_call(self, model_id: str, texts: list[str]) -> PlannedCall[CallAnswers]:
        def answer(body: Any) -> CallAnswers:
            return vectors_of(self.provider, model_id, body, len(texts)), None

        url = f"{self._deps.base_url(model_id)}/embed"
        return PlannedCall(url, {"inputs": texts, "normalize": True, "truncate": True}, model_id, answer)

    def _classify_call(self, model_id: str, texts: list[str]) -> PlannedCall[CallAnswers]:
        def answer(body: Any) -> CallAnswers:
            return labels_of(self.provider, model_id, body, len(texts)), None

        url = f"{self._deps.base_url(model_id)}/predict"
        return PlannedCall(url, {"inputs": texts, "truncate": True, "raw_scores": False}, model_id, answer)
