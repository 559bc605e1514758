"""A FastAPI backend on the cluster: one ``AsyncRouter`` for the app's life, an endpoint that submits a job and
waits for it, one that streams the text as it is made (server-sent events), and the client's errors mapped to
HTTP statuses.

Run it where the cluster's settings are in the environment (or on the embedded defaults, beside
``llm-router worker``)::

    pip install llm-runner-router fastapi uvicorn
    uvicorn examples.fastapi_app.app:app --port 8080
    curl -s localhost:8080/reply -H 'Content-Type: application/json' -d '{"message": "Hello"}'
    curl -sN 'localhost:8080/reply/stream?message=Hello'
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from llm_router import AsyncRouter, InvalidRequest, JobFailed, JobRejected, JobTimeout

WAIT_S = 30.0  # the longest a request waits for its job


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One router for the whole app: its database pool and its Redis connection serve every request.
    async with AsyncRouter() as router:
        app.state.router = router
        yield


app = FastAPI(title="replies", lifespan=lifespan)


def get_router(request: Request) -> AsyncRouter:
    router: AsyncRouter = request.app.state.router
    return router


RouterDep = Annotated[AsyncRouter, Depends(get_router)]


class Ask(BaseModel):
    message: str = Field(min_length=1, max_length=2_000)
    tier: str = "fast"
    max_tokens: int = Field(default=60, ge=1, le=512)


class Reply(BaseModel):
    text: str
    model: str
    job_id: str


@app.exception_handler(InvalidRequest)
async def invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
    # The cluster names the field and the limit; pass that on.
    return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=422)


@app.exception_handler(JobTimeout)
async def timed_out(_: Request, exc: JobTimeout) -> JSONResponse:
    # The job runs on: the client may ask for it again by id.
    return JSONResponse({"detail": str(exc), "job_id": exc.job_id}, status_code=504)


@app.exception_handler(JobFailed)
@app.exception_handler(JobRejected)
async def failed(_: Request, exc: JobFailed | JobRejected) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "job_id": exc.job_id}, status_code=502)


@app.post("/reply")
async def reply(ask: Ask, router: RouterDep) -> Reply:
    messages = [{"role": "user", "content": ask.message}]
    job = await router.generate(messages=messages, tier=ask.tier, max_tokens=ask.max_tokens)
    result = await job.wait(timeout=WAIT_S)
    return Reply(text=result.text, model=result.model, job_id=job.id)


@app.get("/reply/stream")
async def reply_stream(message: str, router: RouterDep, tier: str = "fast") -> StreamingResponse:
    job = await router.generate(messages=[{"role": "user", "content": message}], tier=tier, max_tokens=60, stream=True)

    async def events() -> AsyncIterator[str]:
        finished = False
        try:
            async for delta in job.stream(WAIT_S):
                yield f"data: {json.dumps({'delta': delta})}\n\n"
            finished = True
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # the client went away: nobody reads the rest
                await job.cancel()

    return StreamingResponse(events(), media_type="text/event-stream")
