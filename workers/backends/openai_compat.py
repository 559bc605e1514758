"""The ``openai`` backend: any OpenAI-compatible server (the Hugging Face router's /v1, vLLM, TGI, SGLang).

chat      POST {base}/v1/chat/completions    (requests with messages)
complete  POST {base}/v1/completions         (requests with a prompt)
embed     POST {base}/v1/embeddings
Classification has no OpenAI route: such a model fails over to the next one in the chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

from llm_router.broker.catalogue import GenerationDefaults
from llm_router.tasks.errors import ModelNotFound, NetworkError
from llm_router.tasks.schemas import (
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    Usage,
)
from llm_router.workers.backends.base import Request
from llm_router.workers.backends.http import HttpCaller, PlannedCall, unexpected
from llm_router.workers.backends.remote import (
    CallAnswers,
    Planned,
    RemoteBackend,
    Sampling,
    embed_results,
    in_calls,
    one_each,
    packed_calls,
    vectors_of,
)
from llm_router.workers.backends.usage import TokenCounter
from llm_router.workers.cancellation import STOP_REQUESTED
from llm_router.workers.streaming import DELTAS

# The most inputs OpenAI's embeddings route takes in one call.
INPUTS_PER_CALL = 2048


def _sampling_fields(request: GenerateRequest, sampling: Sampling) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    # Non-standard fields go only when the caller set them: strict servers refuse unknown ones.
    if request.top_k is not None:
        fields["top_k"] = request.top_k
    if request.repetition_penalty is not None:
        fields["repetition_penalty"] = request.repetition_penalty
    if request.seed is not None:
        fields["seed"] = request.seed
    if request.stop:
        fields["stop"] = request.stop
    return fields


def chat_payload(model_id: str, request: GenerateRequest, sampling: Sampling) -> dict[str, Any]:
    messages = [message.model_dump() for message in request.messages or []]
    return {"model": model_id, "messages": messages, **_sampling_fields(request, sampling)}


def _usage(body: dict[str, Any]) -> Usage | None:
    usage = body.get("usage")
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        return None
    completion = usage.get("completion_tokens") or 0
    return Usage.of(usage["prompt_tokens"], completion if isinstance(completion, int) else 0)


def _finish(choice: dict[str, Any]) -> Any:
    return "length" if choice.get("finish_reason") == "length" else "stop"


def streamed_chat(
    caller: HttpCaller,
    url: str,
    payload: dict[str, Any],
    request: GenerateRequest,
    counter: TokenCounter,
    headers: dict[str, str] | None = None,
) -> GenerateResult:
    """A chat completion asked for with ``stream: true``: each delta goes to the job's stream (``DELTAS``) as
    it arrives; a cancelled job (``STOP_REQUESTED``) closes the HTTP stream and keeps what came."""
    model_id, sink, stop = payload["model"], DELTAS.get(), STOP_REQUESTED.get()
    streamed = {**payload, "stream": True, "stream_options": {"include_usage": True}}
    pieces: list[str] = []
    finish: Any = None
    usage: Usage | None = None
    stopped = False
    events = caller.stream_post(url, streamed, model_id, headers)
    try:
        for event in events:
            if not isinstance(event, dict):
                raise unexpected(caller.provider, model_id, "a streamed event that is not an object")
            usage = _usage(event) or usage
            for choice in event.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
                if isinstance(delta, str) and delta:
                    pieces.append(delta)
                    if sink is not None:
                        sink(delta)
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    finish = _finish(choice)
            if stop is not None and stop():
                stopped = True
                break
    finally:
        events.close()
    if finish is None and not stopped:
        # The connection closed before the server said the completion ended: a cut, retried like one.
        raise NetworkError(f"{caller.provider} stream for {model_id} ended before its finish_reason")
    text = "".join(pieces)
    usage = usage or counter.usage(model_id, [m.content for m in request.messages or []], [text])
    return GenerateResult(text=text, model=model_id, usage=usage, finish_reason=finish or "stop")


def wants_stream(request: GenerateRequest) -> bool:
    """Whether to ask a chat server to stream: the job streams its deltas (a streamer is set)."""
    return request.messages is not None and DELTAS.get() is not None


def chat_result(
    provider: str, model_id: str, body: Any, *, request: GenerateRequest, counter: TokenCounter
) -> GenerateResult:
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise unexpected(provider, model_id, "no choices[0].message.content") from None
    usage = _usage(body) or counter.usage(model_id, [m.content for m in request.messages or []], [text or ""])
    return GenerateResult(text=text or "", model=model_id, usage=usage, finish_reason=_finish(choice))


def chat_answer(
    provider: str, model_id: str, request: GenerateRequest, counter: TokenCounter
) -> Callable[[Any], GenerateResult]:
    """What reads a chat completion's body into the job's result."""
    return partial(chat_result, provider, model_id, request=request, counter=counter)


class OpenAIBackend(RemoteBackend):
    provider = "openai"

    def generate(self, model_id: str, request: GenerateRequest, defaults: GenerationDefaults) -> GenerateResult:
        if wants_stream(request):
            payload = chat_payload(model_id, request, Sampling.of(request, defaults))
            url = f"{self._deps.base_url(model_id)}/v1/chat/completions"
            return streamed_chat(self._deps.caller, url, payload, request, self._deps.counter)
        return self._deps.caller.run(self._generate_call(model_id, request, defaults))

    def _generate_call(
        self, model_id: str, request: GenerateRequest, defaults: GenerationDefaults
    ) -> PlannedCall[GenerateResult]:
        sampling = Sampling.of(request, defaults)
        base = self._deps.base_url(model_id)
        if request.messages is not None:
            payload = chat_payload(model_id, request, sampling)
            answer_chat = chat_answer(self.provider, model_id, request, self._deps.counter)
            return PlannedCall(f"{base}/v1/chat/completions", payload, model_id, answer_chat)

        def answer(body: Any) -> GenerateResult:
            try:
                choice = body["choices"][0]
                text = choice["text"]
            except (KeyError, IndexError, TypeError):
                raise unexpected(self.provider, model_id, "no choices[0].text") from None
            usage = _usage(body) or self._deps.counter.usage(model_id, [request.prompt or ""], [text])
            return GenerateResult(text=text, model=model_id, usage=usage, finish_reason=_finish(choice))

        payload = {"model": model_id, "prompt": request.prompt, **_sampling_fields(request, sampling)}
        return PlannedCall(f"{base}/v1/completions", payload, model_id, answer)

    def embed(self, model_id: str, request: EmbedRequest) -> EmbedResult:
        return self.embed_many(model_id, [request])[0]

    def embed_many(self, model_id: str, requests: list[EmbedRequest]) -> list[EmbedResult]:
        plan = partial(self._embed_call, model_id)
        return embed_results(model_id, in_calls(self._deps, model_id, requests, plan, INPUTS_PER_CALL))

    def _embed_call(self, model_id: str, texts: list[str]) -> PlannedCall[CallAnswers]:
        def answer(body: Any) -> CallAnswers:
            try:
                items = sorted(body["data"], key=lambda item: item["index"])
                vectors = [item["embedding"] for item in items]
            except (KeyError, TypeError):
                raise unexpected(self.provider, model_id, "no data[].embedding") from None
            return vectors_of(self.provider, model_id, vectors, len(texts)), _usage(body)

        url = f"{self._deps.base_url(model_id)}/v1/embeddings"
        return PlannedCall(url, {"model": model_id, "input": texts}, model_id, answer)

    def classify(self, model_id: str, request: ClassifyRequest) -> ClassifyResult:
        raise ModelNotFound(f"the openai provider has no classification route (model {model_id})")

    def plan(self, model_id: str, requests: Sequence[Request], defaults: GenerationDefaults) -> list[Planned]:
        if not requests or isinstance(requests[0], ClassifyRequest):
            return []  # refused by classify() on the threads' path
        if isinstance(requests[0], EmbedRequest):
            texts = cast(Sequence[EmbedRequest], requests)
            plan = partial(self._embed_call, model_id)
            return packed_calls(self._deps, model_id, texts, plan, INPUTS_PER_CALL, embed_results)
        generations = cast(Sequence[GenerateRequest], requests)
        return one_each(generations, lambda r: None if r.stream else self._generate_call(model_id, r, defaults))
