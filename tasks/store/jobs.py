"""Jobs read: one, many, a batch's, a key's, and those found lost (their state changes are ``lifecycle``'s)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, tuple_, update

from llm_router.tasks.records import UNFINISHED_STATUSES, WAITING_STATUSES, AttemptRecord, JobRecord, JobStatus
from llm_router.tasks.store.base import JOBS, StoreBase
from llm_router.tasks.store.views import AttemptView, JobView


class JobRecords(StoreBase):
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

    def get(self, job_id: str) -> JobView | None:
        """The job's row (a row, not an ORM object: every wait reads it)."""
        with self.autocommit.connect() as connection:
            row = connection.execute(select(JOBS).where(JOBS.c.id == job_id)).first()
            return JobView.of(row) if row else None

    def status(self, job_id: str) -> JobStatus | None:
        with self.session() as session:
            status = session.scalar(select(JobRecord.status).where(JobRecord.id == job_id))
            return None if status is None else JobStatus(status)

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

    def unfinished_of_batch(self, batch_id: str) -> list[str]:
        with self.session() as session:
            query = select(JobRecord.id).where(
                JobRecord.batch_id == batch_id, JobRecord.status.in_(UNFINISHED_STATUSES)
            )
            return list(session.scalars(query))

    def attempts(self, job_id: str) -> list[AttemptView]:
        with self.session() as session:
            rows = session.scalars(
                select(AttemptRecord).where(AttemptRecord.job_id == job_id).order_by(AttemptRecord.number)
            )
            return [AttemptView.of(attempt) for attempt in rows]

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
        running_lost = (JobRecord.status == JobStatus.RUNNING) & (
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
