"""The ``tei`` backend: Text Embeddings Inference — ``POST {base}/embed`` and ``POST {base}/predict``."""

from __future__ import annotations

from broker.catalogue import GenerationDefaults
from tasks.errors import ModelNotFound
from tasks.schemas import ClassifyRequest, ClassifyResult, EmbedRequest, EmbedResult, GenerateRequest, GenerateResult
from workers.backends.remote import RemoteDeps, classify_result, embed_result


class TeiBackend:
    provider = "tei"

    def __init__(self, deps: RemoteDeps):
        self._deps = deps

    def generate(self, model_id: str, request: GenerateRequest, defaults: GenerationDefaults) -> GenerateResult:
        raise ModelNotFound(f"the tei provider does not generate text (model {model_id})")

    def embed(self, model_id: str, request: EmbedRequest) -> EmbedResult:
        payload = {"inputs": list(request.input), "normalize": True, "truncate": True}
        body = self._deps.caller.post(f"{self._deps.base_url(model_id)}/embed", payload, model_id)
        usage = self._deps.counter.usage(model_id, list(request.input))
        return embed_result(self.provider, model_id, body, len(request.input), usage)

    def classify(self, model_id: str, request: ClassifyRequest) -> ClassifyResult:
        payload = {"inputs": list(request.input), "truncate": True, "raw_scores": False}
        body = self._deps.caller.post(f"{self._deps.base_url(model_id)}/predict", payload, model_id)
        usage = self._deps.counter.usage(model_id, list(request.input))
        return classify_result(self.provider, model_id, body, len(request.input), usage)
