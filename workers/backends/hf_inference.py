"""The ``hf-inference`` backend: the Hugging Face Inference API's task routes.

generate   POST {base}/models/{model}                          {"inputs", "parameters"}
chat       POST {base}/models/{model}/v1/chat/completions      OpenAI chat schema
classify   POST {base}/models/{model}                          {"inputs": [...]}
embed      POST {base}/models/{model}/pipeline/feature-extraction
The legacy ``wait_for_model`` and ``use_cache`` options travel as the ``x-wait-for-model`` and
``x-use-cache`` headers the API accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, cast

from llm_router.broker.catalogue import GenerationDefaults
from llm_router.tasks.schemas import (
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
)
from llm_router.workers.backends.base import Request
from llm_router.workers.backends.http import PlannedCall, unexpected
from llm_router.workers.backends.openai_compat import chat_answer, chat_payload, streamed_chat, wants_stream
from llm_router.workers.backends.remote import (
    CallAnswers,
    Planned,
    RemoteBackend,
    Sampling,
    classify_results,
    embed_results,
    in_calls,
    labels_of,
    one_each,
    packed_calls,
    vectors_of,
)

# Inputs per call unless the catalogue says otherwise: what a TEI-served endpoint takes by default.
INPUTS_PER_CALL = 32


class HfInferenceBackend(RemoteBackend):
    provider = "hf-inference"

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
        if wants_stream(request):  # its OpenAI-compatible chat route streams the same way
            payload = chat_payload(model_id, request, Sampling.of(request, defaults))
            url = self._url(model_id, "/v1/chat/completions")
            headers = self._headers(request.use_cache)
            return streamed_chat(self._deps.caller, url, payload, request, self._deps.counter, headers)
        return self._deps.caller.run(self._generate_call(model_id, request, defaults))

    def _generate_call(
        self, model_id: str, request: GenerateRequest, defaults: GenerationDefaults
    ) -> PlannedCall[GenerateResult]:
        sampling = Sampling.of(request, defaults)
        headers = self._headers(request.use_cache)
        if request.messages is not None:
            url = self._url(model_id, "/v1/chat/completions")
            answer = chat_answer(self.provider, model_id, request, self._deps.counter)
            return PlannedCall(url, chat_payload(model_id, request, sampling), model_id, answer, headers)
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

        def generated(body: Any) -> GenerateResult:
            if isinstance(body, list) and body:
                body = body[0]
            if not isinstance(body, dict) or not isinstance(body.get("generated_text"), str):
                raise unexpected(self.provider, model_id, "no generated_text")
            text = body["generated_text"]
            usage = self._deps.counter.usage(model_id, [request.prompt or ""], [text])
            return GenerateResult(text=text, model=model_id, usage=usage, finish_reason="length")

        payload = {"inputs": request.prompt, "parameters": parameters}
        return PlannedCall(self._url(model_id), payload, model_id, generated, headers)

    def embed(self, model_id: str, request: EmbedRequest) -> EmbedResult:
        return self.embed_many(model_id, [request])[0]

    def embed_many(self, model_id: str, requests: list[EmbedRequest]) -> list[EmbedResult]:
        headers = self._headers(all(request.use_cache for request in requests))
        plan = partial(self._embed_call, model_id, headers)
        return embed_results(model_id, in_calls(self._deps, model_id, requests, plan, INPUTS_PER_CALL))

    def classify(self, model_id: str, request: ClassifyRequest) -> ClassifyResult:
        return self.classify_many(model_id, [request])[0]

    def classify_many(self, model_id: str, requests: list[ClassifyRequest]) -> list[ClassifyResult]:
        headers = self._headers(all(request.use_cache for request in requests))
        plan = partial(self._classify_call, model_id, headers)
        return classify_results(model_id, in_calls(self._deps, model_id, requests, plan, INPUTS_PER_CALL))

    def plan(self, model_id: str, requests: Sequence[Request], defaults: GenerationDefaults) -> list[Planned]:
        if not requests:
            return []
        if isinstance(requests[0], GenerateRequest):
            generations = cast(Sequence[GenerateRequest], requests)
            return one_each(generations, lambda r: None if r.stream else self._generate_call(model_id, r, defaults))
        texts = cast(Sequence[EmbedRequest | ClassifyRequest], requests)
        headers = self._headers(all(request.use_cache for request in texts))
        if isinstance(texts[0], EmbedRequest):
            plan = partial(self._embed_call, model_id, headers)
            return packed_calls(self._deps, model_id, texts, plan, INPUTS_PER_CALL, embed_results)
        plan = partial(self._classify_call, model_id, headers)
        return packed_calls(self._deps, model_id, texts, plan, INPUTS_PER_CALL, classify_results)

    def _embed_call(self, model_id: str, headers: dict[str, str], texts: list[str]) -> PlannedCall[CallAnswers]:
        def answer(body: Any) -> CallAnswers:
            return vectors_of(self.provider, model_id, body, len(texts)), None

        url = self._url(model_id, "/pipeline/feature-extraction")
        return PlannedCall(url, {"inputs": texts}, model_id, answer, headers)

    def _classify_call(self, model_id: str, headers: dict[str, str], texts: list[str]) -> PlannedCall[CallAnswers]:
        def answer(body: Any) -> CallAnswers:
            return labels_of(self.provider, model_id, body, len(texts)), None

        return PlannedCall(self._url(model_id), {"inputs": texts}, model_id, answer, headers)
