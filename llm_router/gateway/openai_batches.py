"""OpenAI's Batch API at the gateway: input files (``/v1/files``), batches made of them, their objects, output
and error files, cancellation, and the tenant's lists of both, paginated as OpenAI's (newest first, ``after``
a cursor, ``has_more``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from llm_router.gateway import batch_api
from llm_router.gateway.common import Key, router_of, submit_batch
from llm_router.gateway.errors import ApiError
from llm_router.tasks.records import RunStatus
from llm_router.tasks.storable import NUL
from llm_router.tasks.store import ApiKeyView, FileView, RunView

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


async def create_batch(request: Request, key: ApiKeyView, body: dict[str, Any]) -> Any:
    router, store = router_of(request), request.app.state.store
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
    submitted = await submit_batch(request, key, [lines.requests[p] for p in positions], batch_id=batch_id)
    jobs = {positions[index]: job.id for index, job in submitted.jobs.items()}
    lines.errors.update({positions[index]: error for index, error in submitted.errors.items()})
    kept = {
        **batch_api.record(batch_id, key.tenant, endpoint, found[0].id, window, lines, jobs),
        "metadata": batch_metadata,
    }
    await asyncio.to_thread(store.create_run, batch_id, batch_api.RUN_KIND, found[0].id, [], kept)
    return await batch_object(request, batch_id, key)


async def batch_object(request: Request, batch_id: str, key: ApiKeyView) -> Any:
    return await _object_of(request, await _owned_batch(request, batch_id, key), key)


async def _object_of(request: Request, run: RunView, key: ApiKeyView) -> Any:
    """The batch object of the tenant's batch ``run``; a batch past its window expires as it is read."""
    store, batch_id = request.app.state.store, run.id
    summary = run.summary or {}
    if "expired_at" not in summary and batch_api.past_window(run, time.time()):
        await router_of(request).cancel_batch(batch_id)  # what finished is kept
        await asyncio.to_thread(store.update_run, batch_id, {**summary, "expired_at": int(time.time())})
        run = await _owned_batch(request, batch_id, key)
    counts = await asyncio.to_thread(store.batch_counts, batch_id, key.tenant)
    batch = batch_api.batch_object(run, counts)
    if batch["status"] in ("completed", "cancelled", "expired") and not run.is_final:
        # Ended: its run is closed (so retention may prune it with its jobs) with what it says.
        await asyncio.to_thread(store.finish_run, batch_id, RunStatus.SUCCEEDED, run.summary)
    return batch


def _page(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """A page of a list, as OpenAI's: the next page starts ``after`` its ``last_id``."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def routes(app: FastAPI) -> None:
    @app.get("/v1/batches", tags=["openai"])
    async def list_batches(
        request: Request, key: Key, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> Any:
        """The tenant's Batch API batches, newest first."""
        store = request.app.state.store
        runs = await asyncio.to_thread(store.tenant_runs, batch_api.RUN_KIND, key.tenant, after=after, limit=limit + 1)
        return _page([await _object_of(request, run, key) for run in runs[:limit]], has_more=len(runs) > limit)

    @app.get("/v1/files", tags=["openai"])
    async def list_files(
        request: Request,
        key: Key,
        purpose: str | None = None,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
        order: Literal["asc", "desc"] = "desc",
    ) -> Any:
        """The tenant's uploaded files, newest first unless ``order=asc``."""
        files = await asyncio.to_thread(
            request.app.state.store.files_of,
            key.tenant,
            purpose=purpose,
            after=after,
            limit=limit + 1,
            newest_first=order == "desc",
        )
        return _page([_file_object(view) for view in files[:limit]], has_more=len(files) > limit)

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
        """An uploaded file's object (its id, size, name and purpose)."""
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
        await router_of(request).cancel_batch(batch_id)
        summary = run.summary or {}
        if "cancelled_at" not in summary:
            await asyncio.to_thread(
                request.app.state.store.update_run, batch_id, {**summary, "cancelled_at": int(time.time())}
            )
        return await batch_object(request, batch_id, key)
