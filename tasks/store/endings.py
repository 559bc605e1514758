"""Jobs ended by their caller or their deadline: cancelled (one, or the unfinished jobs of a batch) and
expired. A job that ended never changes; a running job is not ended here: its worker stops it and records
what it used."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from llm_router.tasks.records import UNFINISHED_STATUSES, WAITING_STATUSES, JobRecord, Status, aware
from llm_router.tasks.store.base import ATTEMPTS, StoreBase, close_lost_attempts, elapsed_ms
from llm_router.tasks.store.views import JobView

CANCELLED_BY_CALLER = "cancelled by its caller"


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
        with self.sessions.begin() as session:
            rows = session.execute(
                select(JobRecord.id, JobRecord.status, JobRecord.created_at)
                .where(JobRecord.id.in_(job_ids))
                .with_for_update()
            ).all()
            now = self.clock.read(session.connection())
            waiting = [row for row in rows if row.status in WAITING_STATUSES]
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
            if waiting:  # a job that ends leaves no attempt open
                session.execute(close_lost_attempts(ATTEMPTS.c.job_id.in_([row.id for row in waiting]), now))
        running = [row.id for row in rows if row.status == Status.RUNNING]
        done = {row.id for row in waiting} | set(running)
        return Cancellation([row.id for row in waiting], running, [job_id for job_id in job_ids if job_id not in done])

    def unfinished_of_batch(self, batch_id: str) -> list[str]:
        with self.session() as session:
            query = select(JobRecord.id).where(
                JobRecord.batch_id == batch_id, JobRecord.status.in_(UNFINISHED_STATUSES)
            )
            return list(session.scalars(query))

    def expire(self, job_id: str, deadline_s: float) -> bool:
        """End a job that has not started within ``deadline_s`` of its submission, judged on the database's
        clock; False when it started or ended meanwhile, or when its deadline has not passed."""
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status not in WAITING_STATUSES:
                return False
            now = self.clock.read(session.connection())
            if aware(record.created_at) + timedelta(seconds=deadline_s) >= now:
                return False
            record.status, record.finished_at = Status.EXPIRED, now
            record.error = f"not started within its deadline of {deadline_s:g} s"
            record.latency_ms = elapsed_ms(record.created_at, now)
            session.execute(close_lost_attempts(ATTEMPTS.c.job_id == job_id, now))
            return True
