"""Jobs coming in: recorded queued (one, or a batch's at once), answered from the cache, sent again after the
broker refused their message, or rejected."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from llm_router.tasks.records import FINAL_STATUSES, UNSENT, JobRecord, JobStatus, UsageRecord
from llm_router.tasks.redaction import redact
from llm_router.tasks.schemas import Usage
from llm_router.tasks.store.base import (
    ATTEMPTS,
    JOBS,
    NewJob,
    StoreBase,
    elapsed_ms,
    insert_ignoring_duplicates,
    job_row,
    storable,
    usage_row,
)
from llm_router.tasks.store.lifecycle.guards import NOT_FINAL, close_lost_attempts
from llm_router.tasks.store.views import JobView


def _row(job: NewJob) -> dict[str, Any]:
    return job_row(
        job_id=job.job_id,
        kind=job.kind,
        request=job.request,
        tier=job.tier,
        queue=job.queue,
        cache_key=job.cache_key,
        idempotency_key=job.idempotency_key,
        run_step=job.run_step,
        tenant=job.tenant,
    )


class Submitting(StoreBase):
    def submit(self, jobs: list[NewJob]) -> set[str]:
        """Record jobs queued; the ids recorded now. One job is one statement (its id, or its idempotency key,
        may be taken: the unique index decides between racing submissions, not a read first); many are one
        transaction, sent through the driver's pipeline, each id recorded once (deterministic ids submitted
        again, or by two producers at once, record nothing twice)."""
        if not jobs:
            return set()
        rows = [_row(job) for job in jobs]
        if len(rows) == 1 and self.driver_insert is not None:
            return {jobs[0].job_id} if self.driver_insert.first(rows[0]) is not None else set()
        if len(rows) > 1 and self.driver_insert_many is not None:
            return {job_id for (job_id,) in self.driver_insert_many.many(rows)}
        with self.sessions.begin() as session:
            statement = insert_ignoring_duplicates(session, JOBS, None if len(rows) == 1 else "id")
            return set(session.scalars(statement.returning(JOBS.c.id), rows))

    def record_answered(self, job: NewJob, source: JobView) -> None:
        """A job answered from the cache at submit time: recorded succeeded, never enqueued."""
        with self.sessions.begin() as session:
            session.execute(insert(JobRecord), [_row(job)])
            record = session.get(JobRecord, job.job_id)
            assert record is not None
            self._answer_from(session, record, source)

    def answer_from_cache(self, job_id: str, source: JobView) -> bool:
        """Answer a waiting job from a cached result; False when it already ended."""
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status in FINAL_STATUSES:
                return False
            now = self._answer_from(session, record, source)
            session.execute(close_lost_attempts(ATTEMPTS.c.job_id == job_id, now))
            return True

    def _answer_from(self, session: Session, record: JobRecord, source: JobView) -> datetime:
        now = self.clock.read(session.connection())
        record.status = JobStatus.SUCCEEDED
        record.cached = True
        record.model_used = source.model_used
        record.result = {**(source.result or {}), "cached": True, "tier": record.tier}
        record.finished_at = now
        record.latency_ms = elapsed_ms(record.created_at or now, now)
        session.flush()
        # A hit costs no tokens; usage counts it as a request and a hit (the seed's cacheHits).
        row = usage_row(
            job_id=record.id,
            kind=record.kind,
            tier=record.tier,
            model=source.model_used or "unknown",
            provider="cache",
            usage=Usage(),
            cached=True,
            latency_ms=record.latency_ms,
            tenant=record.tenant,
            now=now,
        )
        session.execute(insert(UsageRecord), [row])
        return now

    def revive_unsent(self, job_id: str) -> bool:
        """A job recorded failed because the broker refused its message, and never started, made queued
        again to be sent once more; True for the one caller that did it among any racing on the job. (The one
        change a final job takes: it never ran.)"""
        with self.sessions.begin() as session:
            revived = session.execute(
                update(JobRecord)
                .where(
                    JobRecord.id == job_id,
                    JobRecord.status == JobStatus.FAILED,
                    JobRecord.error == UNSENT,
                    JobRecord.attempts == 0,
                )
                .values(status=JobStatus.QUEUED, error=None, finished_at=None, latency_ms=None, due_at=self.clock.now())
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(revived, "rowcount", 0))

    def reject(self, job_id: str, kind: str, error: str, request: dict[str, Any] | None = None) -> None:
        """Record a job as rejected, creating its row when the message named an id never recorded."""
        request, error = storable(request), redact(error)
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None:
                row = job_row(job_id=job_id, kind=kind, request=request, status=JobStatus.REJECTED, error=error)
                session.execute(insert(JobRecord), [row])
                return
            now = self.clock.read(session.connection())
            ended = session.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, NOT_FINAL)
                .values(status=JobStatus.REJECTED, error=error, finished_at=now)
            )
            if getattr(ended, "rowcount", 0):
                session.execute(close_lost_attempts(ATTEMPTS.c.job_id == job_id, now))
