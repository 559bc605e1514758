"""The Hugging Face Inference API's shape at the gateway, so that code written for the guide's Inference API
moves to the cluster by changing one URL::

    client = InferenceClient(base_url=f"{gateway}/models/{model}", token=KEY)
    client.feature_extraction("…"), client.text_classification("…"), client.text_generation("…"),
    client.sentence_similarity("…", other_sentences=[…]), client.chat_completion([…])

``POST /models/{model}`` (a model of the catalogue or a tier's name) runs the task the model's kinds and the
payload leave; ``/models/{model}/pipeline/{task}`` names it; ``/models/{model}/v1/chat/completions`` is the
OpenAI chat route for that model. Answers and errors come in the API's own shapes (``{"error": …}``, and
``estimated_time`` on a 503 while no worker serves the model yet); an identical call is answered from the
cache unless it sends the API's ``x-use-cache: false``; a client that goes away cancels its job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from llm_router.broker.async_client import AsyncJob
from llm_router.gateway import inference_api_format as api
from llm_router.gateway.common import MAX_WAIT_S, Key, Keyed, router_of, sse, submit_job
from llm_router.gateway.errors import STATUS, ApiError
from llm_router.gateway.openai_routes import answer, generation, served
from llm_router.tasks.errors import InvalidRequest, JobError, JobTimeout
from llm_router.tasks.schemas import ClassifyResult, EmbedResult, GenerateResult
from llm_router.tasks.store import ApiKeyView

TRANSLATE = {
    "text-generation": api.generation_request,
    "feature-extraction": api.embedding_request,
    "sentence-similarity": api.similarity_request,
    "text-classification": api.classification_request,
}


def routes(app: FastAPI) -> None:
    @app.post("/models/{path:path}", tags=["inference api"])
    async def inference(
        request: Request, path: str, key: Key, body: Annotated[dict[str, Any], Body()], idempotency_key: Keyed = None
    ) -> Any:
        """A Hugging Face Inference API call for a model (or tier) of the catalogue."""
        try:
            route = api.Route.of(path)
        except InvalidRequest as exc:
            return JSONResponse(api.error_body(str(exc)), status_code=400)
        if route.chat:  # the OpenAI route, with its errors
            return await generation(request, key, {**body, "model": route.target}, idempotency_key, chat=True)
        try:
            return await _call(request, key, route, body, idempotency_key)
        except InvalidRequest as exc:
            return JSONResponse(api.error_body(str(exc)), status_code=400)
        except ApiError as exc:
            retry_after = exc.headers.get("Retry-After")
            estimated = float(retry_after) if exc.code == "no_worker" and retry_after else None
            return JSONResponse(
                api.error_body(exc.message, estimated), status_code=STATUS[exc.code], headers=exc.headers
            )


async def _call(
    request: Request, key: ApiKeyView, route: api.Route, body: dict[str, Any], idempotency_key: str | None
) -> Any:
    catalogue = router_of(request).catalogue
    task = api.task_of(route, body, catalogue)
    ours = TRANSLATE[task](route, body, catalogue)
    if request.headers.get("x-use-cache", "").lower() in ("0", "false"):  # the API's header: answer afresh
        ours["use_cache"] = False
    most = api.top_k(body) if task == "text-classification" else None
    await served(request, ours)
    job = await submit_job(request, key, ours, idempotency_key)
    if ours.get("stream"):
        return _stream_tokens(job, ours["prompt"], api.return_full_text(body))
    result = await answer(request, job)
    if isinstance(result, GenerateResult):
        return api.generated(result, ours["prompt"], api.return_full_text(body))
    if isinstance(result, EmbedResult):
        return api.similarities(result) if task == "sentence-similarity" else api.vectors(result)
    assert isinstance(result, ClassifyResult)
    return api.labels(result, most)


def _stream_tokens(job: AsyncJob, prompt: str, full_text: bool) -> StreamingResponse:
    """Server-sent tokens as TGI sends them; the last event carries the whole text. A client that goes away
    before the end cancels the job."""

    async def events() -> AsyncIterator[str]:
        finished, index, text = False, 0, ""
        try:
            async for delta in job.stream(MAX_WAIT_S):
                text += delta
                yield sse(api.token_event(index, delta))
                index += 1
            finished = True
            yield sse(api.token_event(index, "", prompt + text if full_text else text))
        except (JobError, JobTimeout) as exc:
            finished = True
            yield sse(api.error_body(str(exc)))
        finally:
            if not finished:
                await job.cancel()

    return StreamingResponse(events(), media_type="text/event-stream")
