"""Jobs ended by their caller or their deadline: cancelled (one, or the unfinished jobs of a batch) and
expired. A job that ended never changes; a running job is not ended here: its worker stops it and records
what it used."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from tasks.records import UNFINISHED_STATUSES, JobRecord, Status, aware, utcnow
from tasks.store.base import StoreBase, elapsed_ms
from tasks.store.views import JobView

CANCELLED_BY_CALLER = "cancelled by its caller"
WAITING = (Status.QUEUED, Status.RETRYING)


def past_deadline(job: JobView, deadline_s: float | None) -> bool:
    """Whether a job is past its deadline (seconds from its submission): once there, it may not start."""
    return deadline_s is not None and datetime.now(UTC) > aware(job.created_at) + timedelta(seconds=deadline_s)


@dataclass(frozen=True)
class Cancellation:
    cancelled: list[str]  # waiting jobs, ended now: they never run
    running: list[str]  # running now: their workers are asked to stop them
    ended: list[str]  # already final, or unknown: left as they are


class JobEndings(StoreBase):
    def cancel(self, job_ids: list[str]) -> Cancellation:
        """End the waiting jobs among ``job_ids`` as cancelled, in one transaction; report the running ones."""
        now = utcnow()
        with self.sessions.begin() as session:
            rows = session.execute(
                select(JobRecord.id, JobRecord.status, JobRecord.created_at)
                .where(JobRecord.id.in_(job_ids))
                .with_for_update()
            ).all()
            waiting = [row for row in rows if row.status in WAITING]
            for row in waiting:
                session.execute(
                    update(JobRecord)
                    .where(JobRecord.id == row.id)
                    .values(
                        status=Status.CANCELLED,
                        error=CANCELLED_BY_CALLER,
                        finished_at=now,
                        latency_ms=elapsed_ms(row.created_at, now),
                    )
                )
        running = [row.id for row in rows if row.status == Status.RUNNING]
        done = {row.id for row in waiting} | set(running)
        return Cancellation([row.id for row in waiting], running, [job_id for job_id in job_ids if job_id not in done])

    def unfinished_of_batch(self, batch_id: str) -> list[str]:
        with self.session() as session:
            query = select(JobRecord.id).where(
                JobRecord.batch_id == batch_id, JobRecord.status.in_(UNFINISHED_STATUSES)
            )
            return list(session.scalars(query))

    def expire(self, job_id: str, error: str) -> bool:
        """End a job that has not started by its deadline; False when it started or ended meanwhile."""
        now = utcnow()
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status not in WAITING:
                return False
            record.status, record.error, record.finished_at = Status.EXPIRED, error, now
            record.latency_ms = elapsed_ms(record.created_at, now)
            return True
