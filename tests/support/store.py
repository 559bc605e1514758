"""One-job shorthands over the store's set-based lifecycle, for tests that drive a single job by hand."""

from __future__ import annotations

from typing import Any

from llm_router.tasks.store import AttemptSpec, Busy, JobStore, Lease, NewJob, Success
from llm_router.tasks.store.lifecycle.shapes import Result


def submit_one(
    store: JobStore,
    *,
    job_id: str,
    kind: str,
    request: dict[str, Any],
    tier: str,
    queue: str,
    cache_key: str | None = None,
    idempotency_key: str | None = None,
    tenant: str | None = None,
) -> bool:
    """Record one job queued; False when its id or its idempotency key is taken."""
    job = NewJob(job_id, kind, request, tier, queue, cache_key, idempotency_key=idempotency_key, tenant=tenant)
    return job_id in store.submit([job])


def start_one(
    store: JobStore, job_id: str, *, model: str, provider: str, tier: str | None, worker: str | None, lease: Lease
) -> int | Busy | None:
    """Start one job: its attempt's number, ``Busy`` when a live process runs it, None when it ended."""
    starts = store.start([job_id], AttemptSpec(model, provider, tier, worker), lease)
    if starts.started:
        return starts.started[0].number
    return starts.busy.get(job_id)


def succeed_one(
    store: JobStore,
    job_id: str,
    number: int,
    *,
    result: Result,
    provider: str,
    model_latency_ms: float,
) -> None:
    store.succeed([Success(job_id, number, result, provider, model_latency_ms)])


def usage_and_paths(database_url: str, job_ids: list[str]) -> tuple[list[int], set[str]]:
    """The jobs' books: their usage rows per job (sorted counts), and their attempts' statuses in order, as
    paths such as ``lost,succeeded`` (the set of them)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    ids = {"ids": job_ids}
    by_job = "WHERE job_id = ANY(:ids) GROUP BY job_id"
    with engine.connect() as connection:
        usage = connection.execute(text(f"SELECT count(*) FROM usage {by_job}"), ids).scalars()
        paths = connection.execute(
            text(f"SELECT string_agg(status, ',' ORDER BY number) FROM attempts {by_job}"), ids
        ).scalars()
        books = sorted(usage), set(paths)
    engine.dispose()
    return books
