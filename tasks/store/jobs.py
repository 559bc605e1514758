"""Jobs as a whole: created (one or many), read, rejected, failed, moved to another tier, found lost.

Writes are idempotent where redelivery can repeat them: a job that reached a final state never changes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select, tuple_, update

from llm_router.tasks.records import FINAL_STATUSES, UNSENT, WAITING_STATUSES, AttemptRecord, JobRecord, Status
from llm_router.tasks.redaction import redact
from llm_router.tasks.store.base import (
    ATTEMPTS,
    JOBS,
    NewJob,
    StoreBase,
    close_lost_attempts,
    elapsed_ms,
    insert_ignoring_duplicates,
    job_row,
    storable,
)
from llm_router.tasks.store.views import AttemptView, JobView, lease_end


class JobRecords(StoreBase):
    def create_job(
        self,
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
        """Record one queued job, in one statement; False when its id or its idempotency key is taken (the
        unique index decides between racing submissions, not a read first)."""
        row = job_row(
            job_id=job_id,
            kind=kind,
            request=request,
            tier=tier,
            queue=queue,
            cache_key=cache_key,
            idempotency_key=idempotency_key,
            tenant=tenant,
        )
        if self.driver_insert is not None:
            return self.driver_insert.first(row) is not None
        with self.statements() as session:  # the INSERT is its own transaction: no BEGIN or COMMIT round trips
            statement = insert_ignoring_duplicates(session, JOBS, None).returning(JOBS.c.id)
            return session.execute(statement, [row]).first() is not None

    def job_for_key(self, idempotency_key: str) -> JobView | None:
        """The job submitted with this idempotency key, while the key holds."""
        with self.session() as session:
            record = session.scalars(select(JobRecord).where(JobRecord.idempotency_key == idempotency_key)).first()
            return JobView.of(record) if record else None

    def release_key(self, idempotency_key: str, created_before: datetime) -> bool:
        """Free a key whose time to live has passed (its job keeps everything else); False if it is younger."""
        with self.session() as session:
            result = session.execute(
                update(JobRecord)
                .where(JobRecord.idempotency_key == idempotency_key, JobRecord.created_at < created_before)
                .values(idempotency_key=None)
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(result, "rowcount", 0))

    def create_jobs(self, jobs: list[NewJob]) -> set[str]:
        """Insert many queued jobs in one transaction, skipping ids that exist; returns the ids inserted.

        Bulk producers choose deterministic ids, so that submitting the same lines again cannot create a second
        record; two producers racing on the same ids insert each one once (``ON CONFLICT DO NOTHING``, not a read
        first)."""
        if not jobs:
            return set()
        values = [
            job_row(
                job_id=job.job_id,
                kind=job.kind,
                request=job.request,
                tier=job.tier,
                queue=job.queue,
                cache_key=job.cache_key,
                run_step=job.run_step,
                tenant=job.tenant,
            )
            for job in jobs
        ]
        if self.driver_insert_many is not None:
            return {job_id for (job_id,) in self.driver_insert_many.many(values)}
        with self.sessions.begin() as session:
            statement = insert_ignoring_duplicates(session, JOBS, "id")
            return set(session.scalars(statement.returning(JobRecord.id), values))

    def get(self, job_id: str) -> JobView | None:
        with self.session() as session:
            record = session.get(JobRecord, job_id)
            return JobView.of(record) if record else None

    def status(self, job_id: str) -> str | None:
        with self.session() as session:
            return session.scalar(select(JobRecord.status).where(JobRecord.id == job_id))

    def statuses(self, job_ids: list[str]) -> dict[str, JobView]:
        """Views of the given jobs (those that exist), in chunks the database accepts."""
        found: dict[str, JobView] = {}
        with self.session() as session:
            for start in range(0, len(job_ids), 1000):
                chunk = job_ids[start : start + 1000]
                for record in session.scalars(select(JobRecord).where(JobRecord.id.in_(chunk))):
                    found[record.id] = JobView.of(record)
        return found

    def batch_counts(self, batch_id: str, tenant: str | None = None) -> dict[str, int]:
        """Jobs of a batch by status (only ``tenant``'s, when given)."""
        which = [JobRecord.batch_id == batch_id] + ([JobRecord.tenant == tenant] if tenant is not None else [])
        with self.session() as session:
            rows = session.execute(select(JobRecord.status, func.count()).where(*which).group_by(JobRecord.status))
            return {status: int(count) for status, count in rows}

    def attempts(self, job_id: str) -> list[AttemptView]:
        with self.session() as session:
            rows = session.scalars(
                select(AttemptRecord).where(AttemptRecord.job_id == job_id).order_by(AttemptRecord.number)
            )
            return [AttemptView.of(attempt) for attempt in rows]

    def reject(self, job_id: str, kind: str, error: str, request: dict[str, Any] | None = None) -> None:
        """Record a job as rejected, creating its row when the message named an id we never stored."""
        request, error = storable(request), redact(error)
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None:
                row = job_row(job_id=job_id, kind=kind, request=request, status=Status.REJECTED, error=error)
                session.execute(insert(JobRecord), [row])
            elif record.status not in FINAL_STATUSES:
                now = self.clock.read(session.connection())
                record.status, record.error, record.finished_at = Status.REJECTED, error, now
                session.execute(close_lost_attempts(ATTEMPTS.c.job_id == job_id, now))

    def fail(self, job_id: str, error: str) -> None:
        """End a job failed with ``error``, closing any attempt left open; nothing when it already ended."""
        self.fail_unfinished([job_id], error)

    def fail_unfinished(self, job_ids: list[str], error: str, *, not_leased_by_others: str | None = None) -> list[str]:
        """End failed, with ``error``, those of ``job_ids`` not yet final, each attempt left open closed as lost;
        with ``not_leased_by_others`` (an owner), a job another owner is running is left to it. The ids ended."""
        error = redact(error)
        with self.sessions.begin() as session:
            now = self.clock.read(session.connection())
            which: list[ColumnElement[bool]] = [JobRecord.id.in_(job_ids), JobRecord.status.not_in(FINAL_STATUSES)]
            if not_leased_by_others is not None:
                which.append(
                    (JobRecord.status != Status.RUNNING)
                    | (JobRecord.lease_owner.is_(None))
                    | (JobRecord.lease_owner == not_leased_by_others)
                )
            records = session.scalars(select(JobRecord).where(*which).with_for_update()).all()
            for record in records:
                record.status, record.error, record.finished_at = Status.FAILED, error, now
                record.latency_ms = elapsed_ms(record.created_at, now)
            ended = [record.id for record in records]
            if ended:
                session.execute(close_lost_attempts(ATTEMPTS.c.job_id.in_(ended), now))
            return ended

    def revive_unsent(self, job_id: str) -> bool:
        """A job recorded failed because the broker refused its message, and never started, made queued
        again to be sent once more; True for the one caller that did it among any racing on the job."""
        with self.sessions.begin() as session:
            revived = session.execute(
                update(JobRecord)
                .where(
                    JobRecord.id == job_id,
                    JobRecord.status == Status.FAILED,
                    JobRecord.error == UNSENT,
                    JobRecord.attempts == 0,
                )
                .values(status=Status.QUEUED, error=None, finished_at=None, latency_ms=None, due_at=self.clock.now())
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(revived, "rowcount", 0))

    def mark_retrying(self, job_id: str, delay_s: float) -> None:
        """The job waits ``delay_s`` for its retry's message."""
        self.set_due([job_id], delay_s, status=Status.RETRYING)

    def set_due(self, job_ids: list[str], delay_s: float, *, status: Status | None = None) -> None:
        """Note when the job's next message is due (a retry, a deferral, a requeue), so that a job waiting
        for it is never taken for lost; ``status`` also changes a job not final (to ``retrying``)."""
        values: dict[str, Any] = {"due_at": self.clock.now(delay_s)}
        if status is not None:
            values["status"] = status
        with self.sessions.begin() as session:
            session.execute(
                update(JobRecord)
                .where(JobRecord.id.in_(job_ids), JobRecord.status.not_in(FINAL_STATUSES))
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    def escalate(self, job_id: str, tier: str, queue: str) -> bool:
        """Move a job to another tier's queue (tier fallback); False when it already ended."""
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status in FINAL_STATUSES:
                return False
            record.tier, record.queue, record.status = tier, queue, Status.RETRYING
            record.tier_hops += 1
            record.due_at = self.clock.read(session.connection())
            return True

    def requeue_abandoned(self, job_id: str, due_in_s: float = 0.0) -> bool:
        """A running job whose worker died (its lease ran out), published again: the attempt it left open is
        closed as lost and the job waits for its new message, queued; False when a worker took it meanwhile."""
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            now = self.clock.read(session.connection())
            if record is None or record.status != Status.RUNNING or lease_end(record, now) > now:
                return False
            session.execute(close_lost_attempts(ATTEMPTS.c.job_id == job_id, now))
            record.status, record.lease_owner, record.lease_until = Status.QUEUED, None, None
            record.due_at = now + timedelta(seconds=due_in_s)
            return True

    def waiting_among(self, job_ids: list[str]) -> list[JobView]:
        """Which of ``job_ids`` still wait (queued or retrying) for a message."""
        if not job_ids:
            return []
        with self.session() as session:
            rows = session.scalars(
                select(JobRecord).where(JobRecord.id.in_(job_ids), JobRecord.status.in_(WAITING_STATUSES))
            )
            return [JobView.of(row) for row in rows]

    def waiting_on(self, queue: str, due_before: datetime, limit: int = 500) -> list[JobView]:
        """Jobs of ``queue`` that wait (queued or retrying) for a message due before ``due_before``."""
        with self.session() as session:
            rows = session.scalars(
                select(JobRecord)
                .where(
                    JobRecord.status.in_(WAITING_STATUSES),
                    JobRecord.queue == queue,
                    func.coalesce(JobRecord.due_at, JobRecord.created_at) < due_before,
                )
                .order_by(JobRecord.created_at)
                .limit(limit)
            )
            return [JobView.of(row) for row in rows]

    def stale(
        self,
        running_before: datetime,
        waiting_before: datetime | None = None,
        limit: int = 10_000,
        after: tuple[datetime, str] | None = None,
    ) -> list[JobView]:
        """Jobs that are lost: running under a lease that ran out before ``running_before`` (its worker died),
        or queued or retrying with a message due before ``waiting_before`` (a broker lost it; the same time
        when not given). A job that a live worker runs, or that waits for a retry's or deferral's countdown
        due later, is never stale. In order of creation, after ``after`` (the creation time and id of the last job of
        a previous page)."""
        waiting_before = running_before if waiting_before is None else waiting_before
        running_lost = (JobRecord.status == Status.RUNNING) & (
            func.coalesce(JobRecord.lease_until, JobRecord.started_at, JobRecord.created_at) < running_before
        )
        waiting_lost = (JobRecord.status.in_(WAITING_STATUSES)) & (
            func.coalesce(JobRecord.due_at, JobRecord.created_at) < waiting_before
        )
        page = [] if after is None else [tuple_(JobRecord.created_at, JobRecord.id) > after]
        with self.session() as session:
            rows = session.scalars(
                select(JobRecord)
                .where(running_lost | waiting_lost, *page)
                .order_by(JobRecord.created_at, JobRecord.id)
                .limit(limit)
            )
            return [JobView.of(row) for row in rows]
