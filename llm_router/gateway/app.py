"""The HTTP gateway: an ASGI app (FastAPI) over ``AsyncRouter``.

    jobs API       POST /v1/jobs, GET /v1/jobs/{id}[?wait=S], DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/stream,
                   POST /v1/batches (a JSON list or JSON Lines), GET /v1/batches/{id}, GET /v1/usage
    OpenAI         POST /v1/chat/completions (stream: server-sent chunks), POST /v1/completions,
                   POST /v1/embeddings, GET /v1/models
    operations     GET /healthz (no key), GET /readyz, GET /openapi.json, GET /docs

Every endpoint but /healthz takes ``Authorization: Bearer <key>``; a key names a tenant, whose jobs and usage
only it can read (another's are 404). A client that goes away while it waits for, or streams, an OpenAI
endpoint's answer cancels its job; a job created with POST /v1/jobs is durable and runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse

from llm_router.broker.async_client import AsyncJob, AsyncRouter
from llm_router.broker.consumers import unserved_note
from llm_router.broker.settings import Settings
from llm_router.gateway import batch_api, errors, openai_format
from llm_router.gateway.auth import caller
from llm_router.gateway.errors import ApiError
from llm_router.gateway.metrics import exposition, registry
from llm_router.gateway.presence import announce
from llm_router.gateway.quotas import Quotas, estimate_tokens
from llm_router.tasks.errors import JobError, JobTimeout
from llm_router.tasks.records import RunStatus
from llm_router.tasks.schemas import EmbedResult, GenerateResult
from llm_router.tasks.storable import NUL
from llm_router.tasks.store import ApiKeyView, FileView
from llm_router.tasks.store.async_reads import database_answers

log = logging.getLogger(__name__)

MAX_WAIT_S = 300.0  # the longest a request waits for its job before it answers with where the job stands
SHUTDOWN_STEP_S = 5.0  # the longest one step of the shutdown (a background task, the ledger, the router) may take
Key = Annotated[ApiKeyView, Depends(caller)]
# A retried request with the same key gets the first one's job: no second job, no second reservation.
Keyed = Annotated[str | None, Header(alias="Idempotency-Key")]


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        router = AsyncRouter(settings)
        app.state.router = router
        app.state.store = router.sync.store
        redis_url = router.settings.resolved_redis_url
        quotas = Quotas(router.sync.store, redis_url, router.catalogue.defaults.max_tokens)
        app.state.quotas = quotas
        app.state.metrics = registry(router.sync.store, redis_url)
        background = [asyncio.create_task(quotas.run())]
        if redis_url:
            background.append(asyncio.create_task(announce(redis_url, router.settings.gateway_address)))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                await _bounded("a background task", task)
            await _bounded("the quota ledger", quotas.aclose())
            await _bounded("the router", router.aclose())

    app = FastAPI(title="llm-runner-router gateway", version="1", lifespan=lifespan)
    errors.install(app)
    _operations(app)
    _jobs(app)
    _openai(app)
    _files(app)
    return app


async def _bounded(what: str, step: Awaitable[Any]) -> None:
    """One step of the gateway's shutdown, given ``SHUTDOWN_STEP_S``: a process asked to stop stops (a load
    balancer or an orchestrator waits for it), and says what it could not close. ``asyncio.wait`` and not
    ``wait_for``: the latter waits for a step it timed out to take its cancellation, which a step that swallows
    one never does."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_STEP_S)
    if not done:
        task.cancel()
        log.warning("shutting down: %s did not close within %g s; stopping without it", what, SHUTDOWN_STEP_S)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("shutting down: %s failed to close (%s)", what, type(task.exception()).__name__)


def _router(request: Request) -> AsyncRouter:
    router: AsyncRouter = request.app.state.router
    return router


def _quotas(request: Request) -> Quotas:
    quotas: Quotas = request.app.state.quotas
    return quotas


async def _submit(request: Request, key: ApiKeyView, body: dict[str, Any], idempotency_key: str | None) -> AsyncJob:
    """Admit and submit one job for the key's tenant: what it may spend is reserved first (429 when a limit
    refuses it, and nothing is submitted), given back if the submission fails, and settled once the job ends.
    A submission repeated with its idempotency key was admitted the first time: it reserves nothing more."""
    router = _router(request)
    earlier = None
    if idempotency_key is not None:
        earlier = await asyncio.to_thread(router.sync.store.job_for_key, f"{key.tenant}/{idempotency_key}")
    reservation = None if earlier is not None else await _quotas(request).admit(key, [body])
    keyed = {**body, "idempotency_key": idempotency_key} if idempotency_key is not None else body
    try:
        job = await router.submit(keyed, tenant=key.tenant)
    except BaseException:
        await _quotas(request).release(reservation)
        raise
    await _quotas(request).attach(reservation, f"job:{job.id}")
    return job


async def _submit_batch(request: Request, key: ApiKeyView, requests: list[Any], **options: Any) -> Any:
    """Admit a batch whole (every line's tokens reserved at once, or 429 and nothing submitted) and submit it;
    what the refused lines would have spent is given back."""
    router, quotas = _router(request), _quotas(request)
    reservation = await quotas.admit(key, requests)
    try:
        submitted = await router.batch(requests, tenant=key.tenant, **options)
    except BaseException:
        await quotas.release(reservation)
        raise
    default = router.catalogue.defaults.max_tokens
    kept = sum(estimate_tokens(requests[position], default) for position in submitted.jobs)
    await quotas.attach(reservation, f"batch:{submitted.batch_id}", kept)
    return submitted


async def _owned(request: Request, job_id: str, key: ApiKeyView) -> tuple[AsyncJob, Any]:
    """The tenant's job and its record; 404 for an unknown job and for another tenant's alike."""
    job = AsyncJob(_router(request), job_id, "")
    try:
        view = await job.record()
    except LookupError:
        view = None
    if view is None or view.tenant != key.tenant:
        raise ApiError("not_found", f"job_id: no job {job_id}", param="job_id")
    job.kind = view.kind
    return job, view


def _sse(data: Any, event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


# ---- operations -----------------------------------------------------------------------------------------


def _operations(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up (no key needed, nothing else is asked)."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["operations"])
    async def metrics(request: Request, key: Key) -> Any:
        """Job-level metrics in Prometheus' format, for keys of the tenants in LLM_ROUTER_METRICS_TENANTS."""
        operators = {name.strip() for name in _router(request).settings.metrics_tenants.split(",") if name.strip()}
        if key.tenant not in operators:
            raise ApiError("not_found", "no such endpoint for this key")
        body, content_type = await asyncio.to_thread(exposition, request.app.state.metrics)
        return Response(body, media_type=content_type)

    @app.get("/readyz", tags=["operations"])
    async def readyz(request: Request, key: Key) -> Any:
        """The database and the broker answer."""
        router = _router(request)
        problems = {}
        try:
            await database_answers(router.engine)
        except Exception as exc:  # whatever the driver raises, the database is not ready
            problems["database"] = type(exc).__name__
        try:
            await asyncio.to_thread(_broker_answers, router)
        except Exception as exc:  # kombu and the transports raise many kinds
            problems["broker"] = type(exc).__name__
        if problems:
            return errors.error_response("unavailable", f"not ready: {problems}")
        return {"status": "ready"}


def _broker_answers(router: AsyncRouter) -> None:
    with router.sync.app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


# ---- the jobs API ---------------------------------------------------------------------------------------


def _jobs(app: FastAPI) -> None:
    @app.post("/v1/jobs", status_code=202, tags=["jobs"])
    async def submit(
        request: Request,
        key: Key,
        body: Annotated[dict[str, Any], Body(description="A generate, embed or classify request, as Router.submit")],
        idempotency_key: Keyed = None,
    ) -> Any:
        """Submit a durable job: it runs whether or not the client stays."""
        job = await _submit(request, key, body, idempotency_key)
        return (await job.record()).document()

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(
        request: Request, job_id: str, key: Key, wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0
    ) -> Any:
        """The job's record; with ``wait``, once it ends or ``wait`` seconds pass (it then says where it is)."""
        job, view = await _owned(request, job_id, key)
        if wait and not view.is_final:
            with contextlib.suppress(JobError, JobTimeout):  # the record says how it ended, or that it runs on
                await job.wait(wait)
            view = await job.record()
        return view.document()

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"])
    async def cancel_job(request: Request, job_id: str, key: Key) -> Any:
        """Cancel: a waiting job never runs; a running one is asked to stop; an ended one keeps its result."""
        job, _ = await _owned(request, job_id, key)
        await job.cancel()
        return (await job.record()).document()

    @app.get("/v1/jobs/{job_id}/stream", tags=["jobs"])
    async def stream_job(request: Request, job_id: str, key: Key) -> Any:
        """Server-sent events: ``delta`` events with the text as it is made, then an ``end`` event with the
        record. A durable job: the client going away does not cancel it."""
        job, _ = await _owned(request, job_id, key)

        async def events() -> AsyncIterator[str]:
            try:
                async for delta in job.stream(MAX_WAIT_S):
                    yield _sse({"delta": delta}, "delta")
            except (JobError, JobTimeout):
                pass
            yield _sse((await job.record()).document(), "end")

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/batches", tags=["jobs"])
    async def submit_batch(request: Request, key: Key) -> Any:
        """Many jobs at once, in the bulk lanes: a JSON list of requests, or JSON Lines (one per line); or,
        as OpenAI's Batch API, ``{"input_file_id", "endpoint", "completion_window"}``."""
        raw = await request.body()
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                requests = json.loads(raw)
            else:
                requests = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError("invalid_request", f"body: not JSON or JSON Lines ({exc})", param="body") from None
        except RecursionError:
            raise ApiError("invalid_request", "body: nested too deeply", param="body") from None
        if isinstance(requests, dict) and "input_file_id" in requests:
            return await _openai_batch(request, key, requests)
        if not isinstance(requests, list) or not requests:
            raise ApiError("invalid_request", "body: a non-empty list of requests", param="body")
        submitted = await _submit_batch(request, key, requests)
        counts = await asyncio.to_thread(request.app.state.store.batch_counts, submitted.batch_id, key.tenant)
        return {
            "id": submitted.batch_id,
            "jobs": {str(position): job.id for position, job in submitted.jobs.items()},
            "errors": {str(position): error for position, error in submitted.errors.items()},
            "counts": counts,
        }

    @app.get("/v1/batches/{batch_id}", tags=["jobs"])
    async def get_batch(request: Request, batch_id: str, key: Key) -> Any:
        """A batch's counts by status; an OpenAI batch's batch object."""
        if batch_id.startswith(OPENAI_BATCH):
            return await _openai_batch_object(request, batch_id, key)
        counts = await asyncio.to_thread(request.app.state.store.batch_counts, batch_id, key.tenant)
        if not counts:
            raise ApiError("not_found", f"batch_id: no batch {batch_id}", param="batch_id")
        return {"id": batch_id, "counts": counts, "total": sum(counts.values())}

    @app.get("/v1/usage", tags=["jobs"])
    async def usage(request: Request, key: Key) -> Any:
        """The tenant's usage: requests, cache hits and tokens, in all and by model."""
        report = await asyncio.to_thread(request.app.state.store.tenant_usage, key.tenant)
        return {"tenant": key.tenant, **report.__dict__}


# ---- OpenAI-compatible endpoints ------------------------------------------------------------------------

OPENAI_BATCH = "batch_"
MAX_FILE_BYTES = 100 * 2**20


def _file_object(view: FileView) -> dict[str, Any]:
    return {
        "id": view.id,
        "object": "file",
        "bytes": view.bytes,
        "created_at": int(view.created_at.timestamp()),
        "filename": view.filename,
        "purpose": view.purpose,
    }


async def _owned_batch(request: Request, batch_id: str, key: ApiKeyView) -> Any:
    store = request.app.state.store
    run = await asyncio.to_thread(store.get_run, batch_id)
    if run is None or run.kind != batch_api.RUN_KIND or (run.request or {}).get("tenant") != key.tenant:
        raise ApiError("not_found", f"batch_id: no batch {batch_id}", param="batch_id")
    return run


async def _openai_batch(request: Request, key: ApiKeyView, body: dict[str, Any]) -> Any:
    router, store = _router(request), request.app.state.store
    endpoint, window = body.get("endpoint"), body.get("completion_window", "24h")
    if not isinstance(endpoint, str) or endpoint not in batch_api.ENDPOINTS:
        raise ApiError("invalid_request", f"endpoint: one of {', '.join(batch_api.ENDPOINTS)}", param="endpoint")
    if not isinstance(window, str) or window not in batch_api.COMPLETION_WINDOWS:
        raise ApiError("invalid_request", "completion_window: '24h'", param="completion_window")
    if not isinstance(body["input_file_id"], str):
        raise ApiError("invalid_request", "input_file_id: a file id of POST /v1/files", param="input_file_id")
    batch_metadata = batch_api.metadata(body.get("metadata"))
    found = await asyncio.to_thread(store.file_of, body["input_file_id"], key.tenant)
    if found is None:
        raise ApiError("not_found", f"input_file_id: no file {body['input_file_id']}", param="input_file_id")
    lines = batch_api.read_lines(found[1], endpoint, router.catalogue)
    batch_id = f"{OPENAI_BATCH}{uuid.uuid4().hex[:30]}"  # a run id holds 36 characters
    positions = sorted(lines.requests)
    submitted = await _submit_batch(request, key, [lines.requests[p] for p in positions], batch_id=batch_id)
    jobs = {positions[index]: job.id for index, job in submitted.jobs.items()}
    lines.errors.update({positions[index]: error for index, error in submitted.errors.items()})
    kept = {
        **batch_api.record(batch_id, key.tenant, endpoint, found[0].id, window, lines, jobs),
        "metadata": batch_metadata,
    }
    await asyncio.to_thread(store.create_run, batch_id, batch_api.RUN_KIND, found[0].id, [], kept)
    return await _openai_batch_object(request, batch_id, key)


async def _openai_batch_object(request: Request, batch_id: str, key: ApiKeyView) -> Any:
    store = request.app.state.store
    run = await _owned_batch(request, batch_id, key)
    summary = run.summary or {}
    if "expired_at" not in summary and batch_api.past_window(run, time.time()):
        await _router(request).cancel_batch(batch_id)  # what finished is kept
        await asyncio.to_thread(store.update_run, batch_id, {**summary, "expired_at": int(time.time())})
        run = await _owned_batch(request, batch_id, key)
    counts = await asyncio.to_thread(store.batch_counts, batch_id, key.tenant)
    batch = batch_api.batch_object(run, counts)
    if batch["status"] in ("completed", "cancelled", "expired") and not run.is_final:
        # Ended: its run is closed (so retention may prune it with its jobs) with what it says.
        await asyncio.to_thread(store.finish_run, batch_id, RunStatus.SUCCEEDED, run.summary)
    return batch


def _files(app: FastAPI) -> None:
    @app.post("/v1/files", tags=["openai"])
    async def upload(
        request: Request, key: Key, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]
    ) -> Any:
        """A Batch API input file (JSON Lines, purpose ``batch``, at most 100 MB)."""
        if purpose != "batch":
            raise ApiError("invalid_request", "purpose: only 'batch' is supported", param="purpose")
        raw = await file.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ApiError("invalid_request", "file: at most 100 MB", param="file")
        try:
            content = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ApiError("invalid_request", "file: not UTF-8 text", param="file") from None
        filename = file.filename or "batch.jsonl"
        if NUL in filename:
            raise ApiError("invalid_request", "file: its name may not hold a NUL character", param="file")
        if NUL in content:
            line = content.count("\n", 0, content.index(NUL)) + 1
            raise ApiError("invalid_request", f"file: line {line} holds a NUL character (not text)", param="file")
        store = request.app.state.store
        view = await asyncio.to_thread(store.create_file, key.tenant, purpose, filename, content)
        return _file_object(view)

    @app.get("/v1/files/{file_id}", tags=["openai"])
    async def file_info(request: Request, file_id: str, key: Key) -> Any:
        found = await asyncio.to_thread(request.app.state.store.file_of, file_id, key.tenant)
        if found is None:
            raise ApiError("not_found", f"file_id: no file {file_id}", param="file_id")
        return _file_object(found[0])

    @app.get("/v1/files/{file_id}/content", tags=["openai"])
    async def file_content(request: Request, file_id: str, key: Key) -> Any:
        """An uploaded file, or a batch's output (``…-output``) or error (``…-errors``) file."""
        store = request.app.state.store
        for suffix in (batch_api.OUTPUT, batch_api.ERRORS):
            if file_id.startswith(OPENAI_BATCH) and file_id.endswith(suffix):
                run = await _owned_batch(request, file_id.removesuffix(suffix), key)
                jobs = await asyncio.to_thread(store.run_jobs, run.id)
                text_out = batch_api.output_lines(run, jobs, errors=suffix == batch_api.ERRORS)
                return Response(text_out, media_type="application/jsonl")
        found = await asyncio.to_thread(store.file_of, file_id, key.tenant)
        if found is None:
            raise ApiError("not_found", f"file_id: no file {file_id}", param="file_id")
        return Response(found[1], media_type="application/jsonl")

    @app.post("/v1/batches/{batch_id}/cancel", tags=["openai"])
    async def cancel_batch(request: Request, batch_id: str, key: Key) -> Any:
        """Cancel a batch: its waiting lines never run, running ones are asked to stop, finished ones stay."""
        run = await _owned_batch(request, batch_id, key)
        await _router(request).cancel_batch(batch_id)
        summary = run.summary or {}
        if "cancelled_at" not in summary:
            await asyncio.to_thread(
                request.app.state.store.update_run, batch_id, {**summary, "cancelled_at": int(time.time())}
            )
        return await _openai_batch_object(request, batch_id, key)


def _openai(app: FastAPI) -> None:
    @app.get("/v1/models", tags=["openai"])
    async def models(request: Request, key: Key) -> Any:
        return openai_format.models(_router(request).catalogue)

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat(
        request: Request, key: Key, body: Annotated[dict[str, Any], Body()], idempotency_key: Keyed = None
    ) -> Any:
        return await _generation(request, key, body, idempotency_key, chat=True)

    @app.post("/v1/completions", tags=["openai"])
    async def completions(
        request: Request, key: Key, body: Annotated[dict[str, Any], Body()], idempotency_key: Keyed = None
    ) -> Any:
        return await _generation(request, key, body, idempotency_key, chat=False)

    @app.post("/v1/embeddings", tags=["openai"])
    async def embeddings(
        request: Request, key: Key, body: Annotated[dict[str, Any], Body()], idempotency_key: Keyed = None
    ) -> Any:
        router = _router(request)
        ours = openai_format.embedding_request(body, router.catalogue)
        await _served(request, ours)
        job = await _submit(request, key, ours, idempotency_key)
        result = await _answer(request, job)
        assert isinstance(result, EmbedResult)
        return openai_format.embeddings(result, body.get("encoding_format") or "float")


async def _served(request: Request, ours: dict[str, Any]) -> None:
    """503 ``no_worker`` at once for a request whose answer would be waited on while no live worker consumes its
    queue: no job is made (a client's retries make none either)."""
    queue = await asyncio.to_thread(_router(request).sync.unserved, ours)
    if queue is not None:
        raise ApiError("no_worker", f"{unserved_note(queue)}; try again once one is up", headers={"Retry-After": "10"})


async def _generation(
    request: Request, key: ApiKeyView, body: dict[str, Any], idempotency_key: str | None, *, chat: bool
) -> Any:
    router = _router(request)
    translate = openai_format.chat_request if chat else openai_format.completion_request
    ours = translate(body, router.catalogue)
    await _served(request, ours)
    job = await _submit(request, key, ours, idempotency_key)
    if ours["stream"]:
        return _stream_chat(request, job, chat=chat)
    result = await _answer(request, job)
    assert isinstance(result, GenerateResult)
    answer = openai_format.chat_completion if chat else openai_format.completion
    return answer(job.id, result, openai_format.now())


async def _answer(request: Request, job: AsyncJob) -> Any:
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


def _stream_chat(request: Request, job: AsyncJob, *, chat: bool) -> StreamingResponse:
    """OpenAI's streamed answer: a chunk per delta, a last chunk with the finish reason, ``data: [DONE]``.
    If the client goes away before the end, its job is cancelled."""
    created = openai_format.now()

    def chunk(text: str, finish: str | None = None, model: str = "") -> str:
        if chat:
            delta = {"content": text} if text or finish is None else {}
            return _sse(openai_format.chat_chunk(job.id, model, created, delta, finish))
        return _sse(openai_format.completion_chunk(job.id, model, created, text, finish))

    async def events() -> AsyncIterator[str]:
        finished = False
        try:
            if chat:
                yield _sse(openai_format.chat_chunk(job.id, "", created, {"role": "assistant", "content": ""}))
            async for delta in job.stream(MAX_WAIT_S):
                yield chunk(delta)
            view = await job.record()
            result = view.result or {}
            finished = True
            yield chunk("", result.get("finish_reason") or "stop", view.model_used or "")
            yield "data: [DONE]\n\n"
        except (JobError, JobTimeout) as exc:
            finished = True
            yield _sse({"error": errors.error_body("job_failed", str(exc))})
        finally:
            if not finished:  # the client went away (or the stream broke): nobody will read the rest
                await asyncio.shield(job.cancel())

    return StreamingResponse(events(), media_type="text/event-stream")
