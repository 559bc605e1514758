"""The ``hf-inference`` backend: the Hugging Face Inference API's task routes.

generate   POST {base}/models/{model}                          {"inputs", "parameters"}
chat       POST {base}/models/{model}/v1/chat/completions      OpenAI chat schema
classify   POST {base}/models/{model}                          {"inputs": [...]}
embed      POST {base}/models/{model}/pipeline/feature-extraction
The legacy ``wait_for_model`` and ``use_cache`` options travel as the ``x-wait-for-model`` and
``x-use-cache`` headers the API accepts.
"""

from __future__ import annotations

from typing import Any

from llm_router.broker.catalogue import GenerationDefaults
from llm_router.tasks.schemas import (
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
)
from llm_router.workers.backends.http import unexpected
from llm_router.workers.backends.openai_compat import chat_payload, chat_result, streamed_chat, wants_stream
from llm_router.workers.backends.remote import (
    CallAnswers,
    RemoteDeps,
    Sampling,
    classify_results,
    embed_results,
    in_calls,
    labels_of,
    vectors_of,
)

# Inputs per call unless the catalogue says otherwise: what a TEI-served endpoint takes by default.
INPUTS_PER_CALL = 32


class HfInferenceBackend:
    provider = "hf-inference"

    def __init__(self, deps: RemoteDeps):
        self._deps = deps

    def _headers(self, use_cache: bool) -> dict[str, str]:
        headers = {}
        if self._deps.wait_for_model:
            headers["x-wait-for-model"] = "true"
        if not use_cache:
            headers["x-use-cache"] = "false"
        return headers

    def _url(self, model_id: str, suffix: str = "") -> str:
        return f"{self._deps.base_url(model_id)}/models/{model_id}{suffix}"

    def generate(self, model_id: str, request: GenerateRequest, defaults: GenerationDefaults) -> GenerateResult:
        sampling = Sampling.of(request, defaults)
        headers = self._headers(request.use_cache)
        if wants_stream(request):  # its OpenAI-compatible chat route streams the same way
            payload = chat_payload(model_id, request, sampling)
            url = self._url(model_id, "/v1/chat/completions")
            return streamed_chat(self._deps.caller, url, payload, request, self._deps.counter, headers)
        if request.messages is not None:
            url = self._url(model_id, "/v1/chat/completions")
            body = self._deps.caller.post(url, chat_payload(model_id, request, sampling), model_id, headers)
            return chat_result(self.provider, model_id, body, request, self._deps.counter)
        parameters: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "repetition_penalty": sampling.repetition_penalty,
            "return_full_text": False,
        }
        if sampling.temperature > 0:
            parameters.update(temperature=sampling.temperature, do_sample=True)
        else:
            parameters["do_sample"] = False
        if request.seed is not None:
            parameters["seed"] = request.seed
        if request.stop:
            parameters["stop"] = request.stop
        body = self._deps.caller.post(
            self._url(model_id), {"inputs": request.prompt, "parameters": parameters}, model_id, headers
        )
        if isinstance(body, list) and body:
            body = body[0]
        if not isinstance(body, dict) or not isinstance(body.get("generated_text"), str):
            raise unexpected(self.provider, model_id, "no generated_text")
        text = body["generated_text"]
        usage = self._deps.counter.usage(model_id, [request.prompt or ""], [text])
        return GenerateResult(text=text, model=model_id, usage=usage, finish_reason="length")

    def embed(self, model_id: str, request: EmbedRequest) -> EmbedResult:
        return self.embed_many(model_id, [request])[0]

    def embed_many(self, model_id: str, requests: list[EmbedRequest]) -> list[EmbedResult]:
        url = self._url(model_id, "/pipeline/feature-extraction")
        headers = self._headers(all(request.use_cache for request in requests))

        def call(texts: list[str]) -> CallAnswers:
            body = self._deps.caller.post(url, {"inputs": texts}, model_id, headers)
            return vectors_of(self.provider, model_id, body, len(texts)), None

        return embed_results(model_id, in_calls(self._deps, model_id, requests, call, INPUTS_PER_CALL))

    def classify(self, model_id: str, request: ClassifyRequest) -> ClassifyResult:
        return self.classify_many(model_id, [request])[0]

    def classify_many(self, model_id: str, requests: list[ClassifyRequest]) -> list[ClassifyResult]:
        url, headers = self._url(model_id), self._headers(all(request.use_cache for request in requests))

        def call(texts: list[str]) -> CallAnswers:
            body = self._deps.caller.post(url, {"inputs": texts}, model_id, headers)
            return labels_of(self.provider, model_id, body, len(texts)), None

        return classify_results(model_id, in_calls(self._deps, model_id, requests, call, INPUTS_PER_CALL))
