"""One job's attempts on a worker: started under a lease, failed, passed over, or succeeded with its result
and usage. A job in a final state is never started again; an attempt left open by a dead worker is closed
as lost; usage is written once per job."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update

from tasks.records import FINAL_STATUSES, AttemptRecord, JobRecord, Status, utcnow
from tasks.redaction import redact
from tasks.schemas import ClassifyResult, EmbedResult, GenerateResult
from tasks.store.base import USAGE, StoreBase, elapsed_ms, insert_ignoring_duplicates, usage_row
from tasks.store.views import Busy, Lease, leased_elsewhere

LOST_ATTEMPT = "the worker was lost during this attempt"


def _next_attempt(
    record: JobRecord, status: Status, model: str, provider: str, tier: str | None, worker: str | None, now: datetime
) -> AttemptRecord:
    record.attempts += 1
    return AttemptRecord(
        job_id=record.id,
        number=record.attempts,
        status=status,
        model=model,
        provider=provider,
        tier=tier,
        worker=worker,
        started_at=now,
    )


class AttemptWrites(StoreBase):
    def start_attempt(
        self, job_id: str, *, model: str, provider: str, tier: str | None, worker: str | None, lease: Lease
    ) -> int | Busy | None:
        """Mark the job running under ``lease`` and open an attempt; None when the job already ended (a
        redelivery), ``Busy`` when a live worker process runs it now (a duplicate message)."""
        now = utcnow()
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status in FINAL_STATUSES:
                return None
            busy = leased_elsewhere(record, lease, now)
            if busy is not None:
                return busy
            session.execute(
                update(AttemptRecord)
                .where(AttemptRecord.job_id == job_id, AttemptRecord.status == Status.RUNNING)
                .values(status=Status.LOST, error=LOST_ATTEMPT, finished_at=now)
            )
            record.status = Status.RUNNING
            record.started_at = record.started_at or now
            record.lease_owner, record.lease_until = lease.owner, now + timedelta(seconds=lease.seconds)
            session.add(_next_attempt(record, Status.RUNNING, model, provider, tier, worker, now))
            return record.attempts

    def renew_leases(self, owner: str, seconds: float) -> int:
        """Extend the lease of every job ``owner`` is running; returns how many."""
        with self.sessions.begin() as session:
            result = session.execute(
                update(JobRecord)
                .where(JobRecord.lease_owner == owner, JobRecord.status == Status.RUNNING)
                .values(lease_until=utcnow() + timedelta(seconds=seconds))
                .execution_options(synchronize_session=False)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def fail_attempt(
        self,
        job_id: str,
        number: int,
        error: str,
        *,
        http_status: int | None = None,
        delay_s: float | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """Close an attempt as failed; ``delay_s`` is the policy's wait before the retry it led to."""
        error = redact(error)
        with self.sessions.begin() as session:
            session.execute(
                update(AttemptRecord)
                .where(AttemptRecord.job_id == job_id, AttemptRecord.number == number)
                .values(
                    status=Status.FAILED,
                    error=error,
                    http_status=http_status,
                    delay_s=delay_s,
                    latency_ms=latency_ms,
                    finished_at=utcnow(),
                )
            )

    def skip_attempt(
        self, job_id: str, *, model: str, provider: str, tier: str | None, worker: str | None, reason: str
    ) -> None:
        """Record that a model was passed over (cooling down), so the job's path explains itself."""
        now = utcnow()
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status in FINAL_STATUSES:
                return
            attempt = _next_attempt(record, Status.SKIPPED, model, provider, tier, worker, now)
            attempt.error, attempt.finished_at = redact(reason), now
            session.add(attempt)

    def succeed(
        self,
        job_id: str,
        number: int,
        *,
        result: GenerateResult | EmbedResult | ClassifyResult,
        provider: str,
        model_latency_ms: float,
    ) -> None:
        now = utcnow()
        usage = result.usage
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status in FINAL_STATUSES:
                return
            record.status = Status.SUCCEEDED
            record.model_used = result.model
            record.result = result.model_dump(mode="json")
            record.error = None
            record.finished_at = now
            record.latency_ms = elapsed_ms(record.created_at, now)
            session.execute(
                update(AttemptRecord)
                .where(AttemptRecord.job_id == job_id, AttemptRecord.number == number)
                .values(
                    status=Status.SUCCEEDED,
                    finished_at=now,
                    latency_ms=model_latency_ms,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    total_tokens=usage.total_tokens,
                )
            )
            row = usage_row(
                job_id=job_id,
                kind=record.kind,
                tier=record.tier,
                model=result.model,
                provider=provider,
                usage=usage,
                cached=result.cached,
                latency_ms=record.latency_ms,
                now=now,
            )
            session.execute(insert_ignoring_duplicates(session, USAGE, "job_id"), [row])
