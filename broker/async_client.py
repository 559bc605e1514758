"""The asyncio client for web backends (FastAPI, Starlette, aiohttp): ``AsyncRouter`` and ``AsyncJob``.

Waiting is asynchronous end to end: an ``AsyncJob`` reads its row through an async SQLAlchemy engine
(psycopg's async driver; aiosqlite in the embedded mode) and sleeps on the worker's notice through one
``redis.asyncio`` pub/sub connection shared by every waiting job of the router — no thread and no connection
per waiting request. Submitting runs ``Router``'s own path (validation, routing, the cache, idempotency keys,
the record and the message) on the event loop's executor: kombu has no asyncio transport, and the work is a
few milliseconds. Like ``llm_router.broker.client``, importing this module imports no torch or transformers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from llm_router.broker.jobs import Job, Result, UnknownJob
from llm_router.broker.notifications import SAFETY_POLL_S, AsyncDoneNotices
from llm_router.broker.router import Router
from llm_router.broker.settings import Settings
from llm_router.broker.streams import read_stream_async, stream_key
from llm_router.tasks.errors import JobTimeout
from llm_router.tasks.records import JobStatus
from llm_router.tasks.store import AttemptView, Cancellation, JobView
from llm_router.tasks.store.async_reads import async_engine, read_job


class AsyncJob:
    """A handle on one job, awaited: ``await job.wait()``, ``await job.status()``."""

    def __init__(self, router: AsyncRouter, job_id: str, kind: str):
        self._router = router
        self.id = job_id
        self.kind = kind

    def __repr__(self) -> str:
        return f"AsyncJob(id={self.id!r}, kind={self.kind!r})"

    async def record(self) -> JobView:
        view = await read_job(self._router.engine, self.id)
        if view is None:
            raise UnknownJob(f"job_id: no job {self.id}")
        return view

    async def status(self) -> JobStatus:
        return (await self.record()).status

    async def result(self) -> Result | None:
        """The result when the job succeeded; None while it runs; raises when it failed or was rejected."""
        return Job._outcome(await self.record())

    async def stream(self, timeout: float | None = 300.0) -> AsyncIterator[str]:
        """See ``Job.stream``: ``async for delta in job.stream()``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        view = await self.record()
        notices = self._router.notices
        client = notices.client if notices is not None else None
        if client is None or (view.is_final and not await client.exists(stream_key(self.id))):
            result = await self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            for text in Job._whole(result):
                yield text
            return
        streamed = False
        async for delta in read_stream_async(client, self.id):
            if delta is not None:
                streamed = True
                yield delta
                continue
            view = await self.record()
            if view.is_final and not streamed and not await client.exists(stream_key(self.id)):
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(self.id, view.status, f"still {view.status} after {timeout:g} s")
        outcome = Job._outcome(await self.record())
        if not streamed and outcome is not None:
            for text in Job._whole(outcome):
                yield text

    async def cancel(self) -> Cancellation:
        """See ``Job.cancel``."""
        return await asyncio.to_thread(self._router.sync.cancel_jobs, [self.id])

    async def attempts(self) -> list[AttemptView]:
        return await asyncio.to_thread(self._router.sync.store.attempts, self.id)

    async def wait(self, timeout: float | None = 60.0) -> Result:
        """Until the job ends; raises ``JobFailed``, ``JobRejected`` or ``JobTimeout``. Sleeps on the worker's
        notice (reading the row again at least every ``SAFETY_POLL_S``), or polls without Redis."""
        deadline = None if timeout is None else time.monotonic() + timeout
        notices = self._router.notices
        event = await notices.subscribe(self.id) if notices is not None else None  # before the first read
        try:
            delay = 0.01
            while True:
                view = await self.record()
                outcome = Job._outcome(view)
                if outcome is not None:
                    return outcome
                left = float("inf") if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    note = await asyncio.to_thread(self._router.sync.waiting_note, view)
                    raise JobTimeout(self.id, view.status, f"still {view.status} after {timeout:g} s{note}")
                if event is None:
                    await asyncio.sleep(min(delay, left))
                    delay = min(delay * 1.5, 0.25)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, SAFETY_POLL_S))
                event.clear()
        finally:
            if notices is not None and event is not None:
                await notices.unsubscribe(self.id, event)


async def in_daemon_thread(function: Callable[[], None]) -> None:
    """Await a blocking call run in a daemon thread of its own. Unlike the loop's executor (whose threads the
    interpreter waits for at exit, and which may be full of other calls), a call that hangs there keeps no
    process from stopping once its caller stops waiting."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not done.done():
            done.set_result(None) if error is None else done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            function()
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="llm-router-close", daemon=True).start()
    await done


class AsyncRouter:
    """``Router`` for asyncio: the same methods, awaited. Use it as ``async with AsyncRouter() as router``."""

    def __init__(self, settings: Settings | None = None, **router_options: Any):
        self.sync = Router(settings, **router_options)
        self.settings = self.sync.settings
        self.catalogue = self.sync.catalogue
        self.engine = async_engine(self.settings.resolved_database_url)
        redis_url = self.settings.resolved_redis_url
        self.notices = AsyncDoneNotices(redis_url) if redis_url else None

    async def aclose(self) -> None:
        if self.notices is not None:
            await self.notices.close()
        await self.engine.dispose()
        await in_daemon_thread(self.sync.close)

    async def __aenter__(self) -> AsyncRouter:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def _job(self, job: Job) -> AsyncJob:
        return AsyncJob(self, job.id, job.kind)

    async def submit(self, request: dict[str, Any], *, tenant: str | None = None) -> AsyncJob:
        return self._job(await asyncio.to_thread(self.sync.submit, request, tenant=tenant))

    async def generate(self, prompt: str | None = None, **options: Any) -> AsyncJob:
        return self._job(await asyncio.to_thread(self.sync.generate, prompt, **options))

    async def embed(self, input: str | list[str], **options: Any) -> AsyncJob:
        return self._job(await asyncio.to_thread(self.sync.embed, input, **options))

    async def classify(self, input: str | list[str], **options: Any) -> AsyncJob:
        return self._job(await asyncio.to_thread(self.sync.classify, input, **options))

    async def get(self, job_id: str) -> AsyncJob:
        job = AsyncJob(self, job_id, "")
        view = await job.record()
        job.kind = view.kind
        return job

    async def batch(self, requests: list[dict[str, Any]], **options: Any) -> Any:
        return await asyncio.to_thread(self.sync.batch, requests, **options)

    async def cancel_batch(self, batch_id: str) -> Cancellation:
        return await asyncio.to_thread(self.sync.cancel_batch, batch_id)

    async def batch_progress(self, batch_id: str) -> dict[str, int]:
        return await asyncio.to_thread(self.sync.batch_progress, batch_id)

    async def compare(self, models: list[str] | str, prompt: str | None = None, **options: Any) -> Any:
        return await asyncio.to_thread(self.sync.compare, models, prompt, **options)

    async def evaluate(self, models: list[str] | str, cases: Any, **options: Any) -> Any:
        return await asyncio.to_thread(self.sync.evaluate, models, cases, **options)

    async def pipeline(self, text: str, **options: Any) -> Any:
        return await asyncio.to_thread(self.sync.pipeline, text, **options)

    async def search_models(self, task: str | None = None, **options: Any) -> Any:
        return await asyncio.to_thread(self.sync.search_models, task, **options)

    async def model_info(self, model_id: str, revision: str | None = None) -> Any:
        return await asyncio.to_thread(self.sync.model_info, model_id, revision)
