"""The OpenAI-compatible routes: chat completions and completions (whole or streamed as OpenAI's chunks),
embeddings, models. A client that goes away while it waits for, or streams, an answer cancels its job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import StreamingResponse

from llm_router.broker.async_client import AsyncJob
from llm_router.broker.consumers import unserved_note
from llm_router.gateway import errors, openai_format
from llm_router.gateway.common import MAX_WAIT_S, Key, Keyed, router_of, sse, submit_job
from llm_router.gateway.errors import ApiError
from llm_router.tasks.errors import JobError, JobTimeout
from llm_router.tasks.schemas import EmbedResult, GenerateResult
from llm_router.tasks.store import ApiKeyView


def routes(app: FastAPI) -> None:
    @app.get("/v1/models", tags=["openai"])
    async def models(request: Request, key: Key) -> Any:
        """The catalogue's tiers (usable as model names), then its models."""
        return openai_format.models(router_of(request).catalogue)

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat(
        request: Request, key: Key, body: Annotated[dict[str, Any], Body()], idempotency_key: Keyed = None
    ) -> Any:
        """OpenAI's chat completion: whole, or with ``stream`` as server-sent chunks."""
        return await generation(request, key, body, idempotency_key, chat=True)

    @app.post("/v1/completions", tags=["openai"])
    async def completions(
        request: Request, key: Key, body: Annotated[dict[str, Any], Body()], idempotency_key: Keyed = None
    ) -> Any:
        """OpenAI's (legacy) completion of a prompt: whole, or with ``stream`` as server-sent chunks."""
        return await generation(request, key, body, idempotency_key, chat=False)

    @app.post("/v1/embeddings", tags=["openai"])
    async def embeddings(
        request: Request, key: Key, body: Annotated[dict[str, Any], Body()], idempotency_key: Keyed = None
    ) -> Any:
        """OpenAI's embeddings of one text or a list (``encoding_format`` float or base64)."""
        router = router_of(request)
        ours = openai_format.embedding_request(body, router.catalogue)
        await served(request, ours)
        job = await submit_job(request, key, ours, idempotency_key)
        result = await answer(request, job)
        assert isinstance(result, EmbedResult)
        return openai_format.embeddings(result, body.get("encoding_format") or "float")


async def served(request: Request, ours: dict[str, Any]) -> None:
    """503 ``no_worker`` at once for a request whose answer would be waited on while no live worker consumes its
    queue: no job is made (a client's retries make none either)."""
    queue = await asyncio.to_thread(router_of(request).sync.unserved, ours)
    if queue is not None:
        raise ApiError("no_worker", f"{unserved_note(queue)}; try again once one is up", headers={"Retry-After": "10"})


async def generation(
    request: Request, key: ApiKeyView, body: dict[str, Any], idempotency_key: str | None, *, chat: bool
) -> Any:
    router = router_of(request)
    translate = openai_format.chat_request if chat else openai_format.completion_request
    ours = translate(body, router.catalogue)
    usage = openai_format.include_usage(body)
    await served(request, ours)
    job = await submit_job(request, key, ours, idempotency_key)
    if ours["stream"]:
        return _stream_chat(request, job, str(body["model"]), chat=chat, include_usage=usage)
    result = await answer(request, job)
    assert isinstance(result, GenerateResult)
    shape = openai_format.chat_completion if chat else openai_format.completion
    return shape(job.id, result, openai_format.now())


async def answer(request: Request, job: AsyncJob) -> Any:
    """Wait for the job on the client's behalf; a client that goes away cancels it."""
    waiting = asyncio.ensure_future(job.wait(MAX_WAIT_S))
    while not waiting.done():
        done, _ = await asyncio.wait({waiting}, timeout=1.0)
        if not done and await request.is_disconnected():
            waiting.cancel()
            await job.cancel()
            raise ApiError("invalid_request", "the client went away; its job was cancelled")
    try:
        return waiting.result()
    except JobTimeout as exc:
        raise ApiError("timeout", str(exc)) from None
    except JobError as exc:
        raise ApiError("job_failed", str(exc)) from None


def _stream_chat(request: Request, job: AsyncJob, asked: str, *, chat: bool, include_usage: bool) -> StreamingResponse:
    """OpenAI's streamed answer: a chunk per delta, a last chunk with the finish reason, with
    ``stream_options.include_usage`` a chunk with the usage, then ``data: [DONE]``. Every chunk names the model:
    the one that makes the text once it is known (the model ``asked`` for, a tier's name, until then). If the
    client goes away before the end, its job is cancelled."""
    created = openai_format.now()

    def chunk(text: str, model: str, finish: str | None = None) -> str:
        if chat:
            delta = {"content": text} if text or finish is None else {}
            return sse(openai_format.chat_chunk(job.id, model, created, delta, finish))
        return sse(openai_format.completion_chunk(job.id, model, created, text, finish))

    async def events() -> AsyncIterator[str]:
        finished, model = False, None
        try:
            async for delta in job.stream(MAX_WAIT_S):
                if model is None:  # the first text: the model making it has started
                    model = await _running_model(job) or asked
                    if chat:
                        yield sse(
                            openai_format.chat_chunk(job.id, model, created, {"role": "assistant", "content": ""})
                        )
                yield chunk(delta, model)
            view = await job.record()
            result = view.result or {}
            final_model = view.model_used or model or asked
            if model is None and chat:  # no text at all: the role still comes first
                yield sse(openai_format.chat_chunk(job.id, final_model, created, {"role": "assistant", "content": ""}))
            finished = True
            yield chunk("", final_model, result.get("finish_reason") or "stop")
            if include_usage:
                yield sse(openai_format.usage_chunk(job.id, final_model, created, result.get("usage") or {}, chat=chat))
            yield "data: [DONE]\n\n"
        except (JobError, JobTimeout) as exc:
            finished = True
            yield sse({"error": errors.error_body("job_failed", str(exc))})
        finally:
            if not finished:  # the client went away (or the stream broke): nobody will read the rest
                await asyncio.shield(job.cancel())

    return StreamingResponse(events(), media_type="text/event-stream")


async def _running_model(job: AsyncJob) -> str | None:
    """The model of the job's latest attempt (the one streaming now)."""
    attempts = await job.attempts()
    return attempts[-1].model if attempts else None
