"""Writes for jobs run together: a group of jobs starts in one transaction and ends in one, however many
jobs it holds. The same rules as the one-job writes hold: a job in a final state is never started again, an
attempt left open by a dead worker is closed as lost, one usage row per job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, insert, select, tuple_, update

from llm_router.tasks.records import FINAL_STATUSES, AttemptRecord, JobRecord, Status
from llm_router.tasks.redaction import redact
from llm_router.tasks.schemas import ClassifyResult, EmbedResult, GenerateResult
from llm_router.tasks.store.base import (
    ATTEMPTS,
    JOBS,
    USAGE,
    StoreBase,
    close_lost_attempts,
    elapsed_ms,
    insert_ignoring_duplicates,
    usage_row,
)
from llm_router.tasks.store.views import Lease

Result = GenerateResult | EmbedResult | ClassifyResult


@dataclass(frozen=True)
class Started:
    job_id: str
    number: int
    created_at: datetime
    tenant: str | None = None


class GroupWrites(StoreBase):
    def start_group(
        self, job_ids: list[str], *, model: str, provider: str, tier: str | None, worker: str | None, lease: Lease
    ) -> list[Started]:
        """Mark the jobs running under ``lease`` and open an attempt for each. Jobs that already ended, and
        jobs running under another process's unexpired lease, are left out (the one-job path sorts those)."""
        with self.sessions.begin() as session:
            # One reading of the database's clock for the whole group: its leases, and the attempts' start.
            now = self.clock.read(session.connection())
            free = JobRecord.status.not_in(FINAL_STATUSES) & ~(
                (JobRecord.status == Status.RUNNING)
                & (JobRecord.lease_until > now)
                & (JobRecord.lease_owner != lease.owner)
            )
            taken = session.scalars(select(JobRecord.id).where(JobRecord.id.in_(job_ids), free).with_for_update()).all()
            if not taken:
                return []
            session.execute(close_lost_attempts(ATTEMPTS.c.job_id.in_(taken), now))
            rows = session.execute(
                update(JobRecord)
                .where(JobRecord.id.in_(taken))
                .values(
                    status=Status.RUNNING,
                    started_at=func.coalesce(JobRecord.started_at, now),
                    attempts=JobRecord.attempts + 1,
                    lease_owner=lease.owner,
                    lease_until=now + timedelta(seconds=lease.seconds),
                )
                .returning(JobRecord.id, JobRecord.attempts, JobRecord.created_at, JobRecord.tenant)
                .execution_options(synchronize_session=False)
            ).all()
            started = [Started(job_id, number, created_at, tenant) for job_id, number, created_at, tenant in rows]
            if started:
                session.execute(
                    insert(AttemptRecord),
                    [
                        {
                            "job_id": job.job_id,
                            "number": job.number,
                            "status": Status.RUNNING,
                            "model": model,
                            "provider": provider,
                            "tier": tier,
                            "worker": worker,
                            "started_at": now,
                        }
                        for job in started
                    ],
                )
            return started

    def succeed_group(
        self,
        outcomes: list[tuple[Started, Result]],
        *,
        kind: str,
        tier: str,
        provider: str,
        model_latency_ms: float,
        cancelled: frozenset[str] = frozenset(),
    ) -> None:
        """Record each job's result, close its attempt and write its usage row, all in one transaction. The
        jobs in ``cancelled`` were stopped by their callers: they end ``cancelled`` with what they made."""
        if not outcomes:
            return
        with self.sessions.begin() as session:
            connection = session.connection()
            now = self.clock.read(connection)
            connection.execute(
                update(JOBS)
                .where(JOBS.c.id == bindparam("b_id"), JOBS.c.status == Status.RUNNING)
                .values(
                    status=bindparam("b_status"),
                    model_used=bindparam("b_model"),
                    result=bindparam("b_result"),
                    error=None,
                    finished_at=now,
                    latency_ms=bindparam("b_latency"),
                ),
                [
                    {
                        "b_id": job.job_id,
                        "b_status": Status.CANCELLED if job.job_id in cancelled else Status.SUCCEEDED,
                        "b_model": result.model,
                        "b_result": result.model_dump(mode="json"),
                        "b_latency": elapsed_ms(job.created_at, now),
                    }
                    for job, result in outcomes
                ],
            )
            connection.execute(
                update(ATTEMPTS)
                .where(ATTEMPTS.c.job_id == bindparam("b_job"), ATTEMPTS.c.number == bindparam("b_number"))
                .values(
                    status=bindparam("b_status"),
                    finished_at=now,
                    latency_ms=model_latency_ms,
                    prompt_tokens=bindparam("b_prompt"),
                    completion_tokens=bindparam("b_completion"),
                    total_tokens=bindparam("b_total"),
                ),
                [
                    {
                        "b_job": job.job_id,
                        "b_number": job.number,
                        "b_status": Status.CANCELLED if job.job_id in cancelled else Status.SUCCEEDED,
                        "b_prompt": result.usage.prompt_tokens,
                        "b_completion": result.usage.completion_tokens,
                        "b_total": result.usage.total_tokens,
                    }
                    for job, result in outcomes
                ],
            )
            # A job that ends leaves no attempt open: one that ran on elsewhere while it ended here is closed.
            numbers = [(job.job_id, job.number) for job, _ in outcomes]
            ended = select(JOBS.c.id).where(
                JOBS.c.id.in_([job_id for job_id, _ in numbers]), JOBS.c.status != Status.RUNNING
            )
            session.execute(
                close_lost_attempts(
                    ATTEMPTS.c.job_id.in_(ended) & tuple_(ATTEMPTS.c.job_id, ATTEMPTS.c.number).not_in(numbers), now
                )
            )
            # One usage row per job: a redelivered group finds its rows and adds none.
            rows = [
                usage_row(
                    job_id=job.job_id,
                    kind=kind,
                    tier=tier,
                    model=result.model,
                    provider=provider,
                    usage=result.usage,
                    cached=False,
                    latency_ms=elapsed_ms(job.created_at, now),
                    now=now,
                    tenant=job.tenant,
                )
                for job, result in outcomes
            ]
            session.execute(insert_ignoring_duplicates(session, USAGE, "job_id"), rows)

    def fail_group_attempts(self, started: list[Started], error: str, *, latency_ms: float) -> None:
        """Close the attempts of a group whose model call failed; each job then runs on its own."""
        if not started:
            return
        with self.sessions.begin() as session:
            session.connection().execute(
                update(ATTEMPTS)
                .where(ATTEMPTS.c.job_id == bindparam("b_job"), ATTEMPTS.c.number == bindparam("b_number"))
                .values(status=Status.FAILED, error=redact(error), latency_ms=latency_ms, finished_at=self.clock.now()),
                [{"b_job": job.job_id, "b_number": job.number} for job in started],
            )
