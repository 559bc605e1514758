"""The HTTP gateway: an ASGI app (FastAPI) over ``AsyncRouter``.

    jobs API       POST /v1/jobs, GET /v1/jobs/{id}[?wait=S], DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/stream,
                   POST /v1/batches (a JSON list or JSON Lines), GET /v1/batches/{id}, GET /v1/usage
    OpenAI         POST /v1/chat/completions (stream: server-sent chunks), POST /v1/completions,
                   POST /v1/embeddings, GET /v1/models, the Batch API (/v1/files, /v1/batches)
    Inference API  POST /models/{model}[/pipeline/{task}], POST /models/{model}/v1/chat/completions
    operations     GET /healthz, GET /readyz (neither needs a key), GET /openapi.json, GET /docs

Every endpoint but the probes takes ``Authorization: Bearer <key>``; a key names a tenant, whose jobs and usage
only it can read (another's are 404). A client that goes away while it waits for, or streams, an OpenAI
endpoint's answer cancels its job; a job created with POST /v1/jobs is durable and runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse

from llm_router.broker import tracing
from llm_router.broker.async_client import AsyncJob, AsyncRouter
from llm_router.broker.settings import Settings
from llm_router.gateway import errors, inference_api, openai_batches, openai_routes
from llm_router.gateway.common import MAX_WAIT_S, Key, Keyed, router_of, sse, submit_batch, submit_job
from llm_router.gateway.errors import ApiError
from llm_router.gateway.json_bodies import JsonBodies
from llm_router.gateway.metrics import exposition, registry
from llm_router.gateway.presence import announce
from llm_router.gateway.quotas import Quotas
from llm_router.tasks.errors import JobError, JobTimeout
from llm_router.tasks.store import ApiKeyView
from llm_router.tasks.store.async_reads import database_answers

log = logging.getLogger(__name__)

SHUTDOWN_STEP_S = 5.0  # the longest one step of the shutdown (a background task, the ledger, the router) may take


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.configure("llm-router-gateway")
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
    app.add_middleware(JsonBodies, raw_paths=frozenset({"/v1/batches", "/v1/files"}))
    _operations(app)
    _jobs(app)
    openai_routes.routes(app)
    inference_api.routes(app)
    openai_batches.routes(app)
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


async def _owned(request: Request, job_id: str, key: ApiKeyView) -> tuple[AsyncJob, Any]:
    """The tenant's job and its record; 404 for an unknown job and for another tenant's alike."""
    job = AsyncJob(router_of(request), job_id, "")
    try:
        view = await job.record()
    except LookupError:
        view = None
    if view is None or view.tenant != key.tenant:
        raise ApiError("not_found", f"job_id: no job {job_id}", param="job_id")
    job.kind = view.kind
    return job, view


def _list_or_lines(text: str) -> Any:
    """A body sent without a JSON type: a JSON list (or an OpenAI batch's object) as it is, else JSON Lines."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, list) or (isinstance(whole, dict) and "input_file_id" in whole):
        return whole
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---- operations -----------------------------------------------------------------------------------------


def _operations(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up (no key needed, nothing else is asked)."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["operations"])
    async def metrics(request: Request, key: Key) -> Any:
        """Job-level metrics in Prometheus' format, for keys of the tenants in LLM_ROUTER_METRICS_TENANTS."""
        operators = {name.strip() for name in router_of(request).settings.metrics_tenants.split(",") if name.strip()}
        if key.tenant not in operators:
            raise ApiError("not_found", "no such endpoint for this key")
        body, content_type = await asyncio.to_thread(exposition, request.app.state.metrics)
        return Response(body, media_type=content_type)

    @app.get("/readyz", tags=["operations"])
    async def readyz(request: Request) -> Any:
        """The database and the broker answer (no key needed: a load balancer's probe has none)."""
        router = router_of(request)
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
        job = await submit_job(request, key, body, idempotency_key)
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
                    yield sse({"delta": delta}, "delta")
            except (JobError, JobTimeout):
                pass
            yield sse((await job.record()).document(), "end")

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/batches", tags=["jobs"])
    async def submit_many(request: Request, key: Key) -> Any:
        """Many jobs at once, in the bulk lanes: a JSON list of requests, or JSON Lines (one per line); or,
        as OpenAI's Batch API, ``{"input_file_id", "endpoint", "completion_window"}``."""
        raw = await request.body()
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                requests = json.loads(raw)
            else:
                requests = _list_or_lines(raw.decode())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError("invalid_request", f"body: not JSON or JSON Lines ({exc})", param="body") from None
        except RecursionError:
            raise ApiError("invalid_request", "body: nested too deeply", param="body") from None
        if isinstance(requests, dict) and "input_file_id" in requests:
            return await openai_batches.create_batch(request, key, requests)
        if not isinstance(requests, list) or not requests:
            raise ApiError("invalid_request", "body: a non-empty list of requests", param="body")
        submitted = await submit_batch(request, key, requests)
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
        if batch_id.startswith(openai_batches.OPENAI_BATCH):
            return await openai_batches.batch_object(request, batch_id, key)
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
