"""Jobs between runs: waiting for a retry's or a deferral's message, moved to another tier, cancelled or
expired while they wait, and recovered from a worker that died."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from llm_router.tasks.records import WAITING_STATUSES, JobRecord, JobStatus, aware
from llm_router.tasks.store.base import ATTEMPTS, JOBS, StoreBase, elapsed_ms
from llm_router.tasks.store.lifecycle.guards import CANCELLED_BY_CALLER, NOT_FINAL, close_lost_attempts
from llm_router.tasks.store.lifecycle.shapes import Cancellation
from llm_router.tasks.store.views import lease_end


class Waiting(StoreBase):
    def retry(self, job_ids: list[str], delay_s: float) -> None:
        """The jobs wait ``delay_s`` for their retry's message (``retrying``)."""
        self._due(job_ids, delay_s, JobStatus.RETRYING)

    def defer(self, job_ids: list[str], delay_s: float) -> None:
        """The jobs' next message is due in ``delay_s`` (a rate limit, a cooling chain, a requeue), so that a job
        waiting for it is never taken for lost; their status is left as it is."""
        self._due(job_ids, delay_s, None)

    def _due(self, job_ids: list[str], delay_s: float, status: JobStatus | None) -> None:
        values: dict[str, Any] = {"due_at": self.clock.now(delay_s)}
        if status is not None:
            values["status"] = status
        with self.sessions.begin() as session:
            session.execute(
                update(JOBS).where(JOBS.c.id.in_(job_ids), NOT_FINAL).values(**values),
            )

    def escalate(self, job_id: str, tier: str, queue: str) -> bool:
        """Move a job to another tier's queue (tier fallback); False when it already ended."""
        with self.sessions.begin() as session:
            moved = session.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, NOT_FINAL)
                .values(
                    tier=tier,
                    queue=queue,
                    status=JobStatus.RETRYING,
                    tier_hops=JOBS.c.tier_hops + 1,
                    due_at=self.clock.now(),
                )
            )
            return bool(getattr(moved, "rowcount", 0))

    def recover(self, job_id: str, due_in_s: float = 0.0) -> bool:
        """A running job whose worker died (its lease ran out), published again: the attempt it left open is
        closed as lost and the job waits for its new message, queued; False when a worker took it meanwhile."""
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            now = self.clock.read(session.connection())
            if record is None or record.status != JobStatus.RUNNING or lease_end(record, now) > now:
                return False
            session.execute(close_lost_attempts(ATTEMPTS.c.job_id == job_id, now))
            record.status, record.lease_owner, record.lease_until = JobStatus.QUEUED, None, None
            record.due_at = now + timedelta(seconds=due_in_s)
            return True

    def cancel(self, job_ids: list[str]) -> Cancellation:
        """End the waiting jobs among ``job_ids`` as cancelled, in one transaction; report the running ones (their
        workers stop them, and record what they made)."""
        with self.sessions.begin() as session:
            rows = session.execute(
                select(JOBS.c.id, JOBS.c.status, JOBS.c.created_at)
                .where(JOBS.c.id.in_(job_ids))
                .order_by(JOBS.c.id)
                .with_for_update()
            ).all()
            now = self.clock.read(session.connection())
            waiting = [row for row in rows if row.status in WAITING_STATUSES]
            for row in waiting:
                session.execute(
                    update(JOBS)
                    .where(JOBS.c.id == row.id)
                    .values(
                        status=JobStatus.CANCELLED,
                        error=CANCELLED_BY_CALLER,
                        finished_at=now,
                        latency_ms=elapsed_ms(row.created_at, now),
                    )
                )
            if waiting:
                session.execute(close_lost_attempts(ATTEMPTS.c.job_id.in_([row.id for row in waiting]), now))
        running = [row.id for row in rows if row.status == JobStatus.RUNNING]
        done = {row.id for row in waiting} | set(running)
        return Cancellation([row.id for row in waiting], running, [job_id for job_id in job_ids if job_id not in done])

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
            record.status, record.finished_at = JobStatus.EXPIRED, now
            record.error = f"not started within its deadline of {deadline_s:g} s"
            record.latency_ms = elapsed_ms(record.created_at, now)
            session.execute(close_lost_attempts(ATTEMPTS.c.job_id == job_id, now))
            return True
