"""The ``tei`` backend: Text Embeddings Inference — ``POST {base}/embed`` and ``POST {base}/predict``."""

from __future__ import annotations

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
from llm_router.workers.backends.remote import (
    CallAnswers,
    RemoteDeps,
    classify_results,
    embed_results,
    in_calls,
    labels_of,
    vectors_of,
)

# TEI's own default for max_client_batch_size.
INPUTS_PER_CALL = 32


class TeiBackend:
    provider = "tei"

    def __init__(self, deps: RemoteDeps):
        self._deps = deps

    def generate(self, model_id: str, request: GenerateRequest, defaults: GenerationDefaults) -> GenerateResult:
        raise ModelNotFound(f"the tei provider does not generate text (model {model_id})")

    def embed(self, model_id: str, request: EmbedRequest) -> EmbedResult:
        return self.embed_many(model_id, [request])[0]

    def embed_many(self, model_id: str, requests: list[EmbedRequest]) -> list[EmbedResult]:
        url = f"{self._deps.base_url(model_id)}/embed"

        def call(texts: list[str]) -> CallAnswers:
            body = self._deps.caller.post(url, {"inputs": texts, "normalize": True, "truncate": True}, model_id)
            return vectors_of(self.provider, model_id, body, len(texts)), None

        return embed_results(model_id, in_calls(self._deps, model_id, requests, call, INPUTS_PER_CALL))

    def classify(self, model_id: str, request: ClassifyRequest) -> ClassifyResult:
        return self.classify_many(model_id, [request])[0]

    def classify_many(self, model_id: str, requests: list[ClassifyRequest]) -> list[ClassifyResult]:
        url = f"{self._deps.base_url(model_id)}/predict"

        def call(texts: list[str]) -> CallAnswers:
            body = self._deps.caller.post(url, {"inputs": texts, "truncate": True, "raw_scores": False}, model_id)
            return labels_of(self.provider, model_id, body, len(texts)), None

        return classify_results(model_id, in_calls(self._deps, model_id, requests, call, INPUTS_PER_CALL))
