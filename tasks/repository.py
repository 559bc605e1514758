"""All SQL lives here. Tasks and the client call these methods; they never build queries themselves.

Writes are idempotent where redelivery can repeat them: a job that reached a final state is never
started again, and usage is keyed by job id.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tasks.records import (
    FAILED,
    FINAL_STATUSES,
    LOST,
    QUEUED,
    REJECTED,
    RETRYING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    AttemptRecord,
    JobRecord,
    UsageRecord,
    utcnow,
)
from tasks.redaction import redact
from tasks.schemas import ClassifyResult, EmbedResult, GenerateResult, Usage
from tasks.views import AttemptView, Busy, JobView, Lease, UsageRow, leased_elsewhere

__all__ = ["DATABASE_UNAVAILABLE", "AttemptView", "Busy", "JobStore", "JobView", "Lease", "UsageRow"]


MAX_STORED_REJECTED_REQUEST = 64 * 1024


def _storable(request: dict[str, Any] | None) -> dict[str, Any] | None:
    """A rejected request as it can be kept: strict JSON (no NaN), and small. Anything else is described
    rather than stored, so that recording the rejection cannot itself fail."""
    if request is None:
        return None
    try:
        encoded = json.dumps(request, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return {"not_stored": f"not strict JSON ({type(exc).__name__})", "fields": sorted(map(str, request))[:50]}
    if len(encoded) > MAX_STORED_REJECTED_REQUEST:
        return {"not_stored": f"{len(encoded):,} bytes", "fields": sorted(map(str, request))[:50]}
    return request


def elapsed_ms(since: datetime, now: datetime) -> float:
    if since.tzinfo is None:  # SQLite hands back naive timestamps
        now = now.replace(tzinfo=None)
    return (now - since).total_seconds() * 1000.0


def insert_ignoring_duplicates(session: Session, table: Table, column: str) -> Any:
    """An INSERT that skips rows whose ``column`` (a unique key) is already taken."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[column])
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[column])
    raise NotImplementedError(f"inserts that skip duplicates on {dialect}")


# What a lost or restarting database raises: the work is retried later, never acknowledged as done.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)


class JobStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def session(self) -> Session:
        return self.sessions()

    # ---- producer side -----------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        job_id: str,
        kind: str,
        request: dict[str, Any],
        tier: str,
        queue: str,
        cache_key: str | None = None,
    ) -> None:
        with self.sessions.begin() as session:
            session.add(
                JobRecord(
                    id=job_id,
                    kind=kind,
                    status=QUEUED,
                    tier=tier,
                    queue=queue,
                    requested_model=request.get("model"),
                    request=request,
                    batch_id=request.get("batch_id"),
                    cache_key=cache_key,
                    cached=False,
                    attempts=0,
                )
            )

    def create_jobs(self, rows: list[dict[str, Any]]) -> set[str]:
        """Insert many queued jobs in one transaction, skipping ids that exist; returns the ids inserted.

        Each row has ``job_id``, ``kind``, ``request``, ``tier``, ``queue`` and ``cache_key``. Bulk producers
        choose deterministic ids, so that submitting the same lines again cannot create a second record; two
        producers racing on the same ids insert each one once (``ON CONFLICT DO NOTHING``, not a read first)."""
        if not rows:
            return set()
        values = [
            {
                "id": row["job_id"],
                "kind": row["kind"],
                "status": QUEUED,
                "tier": row["tier"],
                "queue": row["queue"],
                "requested_model": row["request"].get("model"),
                "request": row["request"],
                "batch_id": row["request"].get("batch_id"),
                "cache_key": row["cache_key"],
                "cached": False,
                "attempts": 0,
                "created_at": utcnow(),
            }
            for row in rows
        ]
        with self.sessions.begin() as session:
            statement = insert_ignoring_duplicates(session, JobRecord.__table__, "id")  # type: ignore[arg-type]
            return set(session.scalars(statement.returning(JobRecord.id), values))

    def statuses(self, job_ids: list[str]) -> dict[str, JobView]:
        """Views of the given jobs (those that exist), in chunks the database accepts."""
        found: dict[str, JobView] = {}
        with self.session() as session:
            for start in range(0, len(job_ids), 1000):
                chunk = job_ids[start : start + 1000]
                for record in session.scalars(select(JobRecord).where(JobRecord.id.in_(chunk))):
                    found[record.id] = JobView.of(record)
        return found

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(
                select(JobRecord.status, func.count()).where(JobRecord.batch_id == batch_id).group_by(JobRecord.status)
            )
            return {status: int(count) for status, count in rows}

    # ---- the result cache --------------------------------------------------------------------------------

    def find_cached(self, cache_key: str, max_age_s: float) -> JobView | None:
        """The newest job with this key whose answer a model computed less than ``max_age_s`` ago. Jobs
        answered from the cache are not sources: the age counts from when the answer was computed."""
        oldest = utcnow() - timedelta(seconds=max_age_s)
        with self.session() as session:
            record = session.scalars(
                select(JobRecord)
                .where(
                    JobRecord.cache_key == cache_key,
                    JobRecord.status == SUCCEEDED,
                    JobRecord.cached.is_(False),
                    JobRecord.finished_at >= oldest,
                )
                .order_by(JobRecord.finished_at.desc())
                .limit(1)
            ).first()
            return JobView.of(record) if record else None

    def record_cached(
        self, *, job_id: str, kind: str, request: dict[str, Any], tier: str, queue: str, cache_key: str, source: JobView
    ) -> None:
        """A job answered from the cache at submit time: written succeeded, never enqueued."""
        with self.sessions.begin() as session:
            record = JobRecord(
                id=job_id,
                kind=kind,
                status=QUEUED,
                tier=tier,
                queue=queue,
                requested_model=request.get("model"),
                request=request,
                batch_id=request.get("batch_id"),
                cache_key=cache_key,
                cached=False,
                attempts=0,
            )
            session.add(record)
            self._answer_from(session, record, source)

    def succeed_from_cache(self, job_id: str, source: JobView) -> bool:
        """Answer a queued job from a cached result; False when it already ended."""
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status in FINAL_STATUSES:
                return False
            self._answer_from(session, record, source)
            return True

    @staticmethod
    def _answer_from(session: Session, record: JobRecord, source: JobView) -> None:
        now = utcnow()
        record.status = SUCCEEDED
        record.cached = True
        record.model_used = source.model_used
        record.result = {**(source.result or {}), "cached": True, "tier": record.tier}
        record.finished_at = now
        record.latency_ms = elapsed_ms(record.created_at or now, now)
        session.flush()
        # A hit costs no tokens; usage counts it as a request and a hit (the seed's cacheHits).
        session.add(
            UsageRecord(
                job_id=record.id,
                kind=record.kind,
                tier=record.tier,
                model=source.model_used or "unknown",
                provider="cache",
                prompt_tokens=0,
                completion_tokens=0,
                total_tokens=0,
                cached=True,
                latency_ms=record.latency_ms,
                created_at=now,
            )
        )

    def get(self, job_id: str) -> JobView | None:
        with self.session() as session:
            record = session.get(JobRecord, job_id)
            return JobView.of(record) if record else None

    def status(self, job_id: str) -> str | None:
        with self.session() as session:
            return session.scalar(select(JobRecord.status).where(JobRecord.id == job_id))

    def attempts(self, job_id: str) -> list[AttemptView]:
        with self.session() as session:
            rows = session.scalars(
                select(AttemptRecord).where(AttemptRecord.job_id == job_id).order_by(AttemptRecord.number)
            )
            return [
                AttemptView(
                    number=a.number,
                    status=a.status,
                    model=a.model,
                    provider=a.provider,
                    tier=a.tier,
                    worker=a.worker,
                    error=a.error,
                    http_status=a.http_status,
                    delay_s=a.delay_s,
                    latency_ms=a.latency_ms,
                    total_tokens=a.total_tokens,
                    started_at=a.started_at,
                    finished_at=a.finished_at,
                )
                for a in rows
            ]

    # ---- worker side -------------------------------------------------------------------------------------

    def reject(self, job_id: str, kind: str, error: str, request: dict[str, Any] | None = None) -> None:
        """Record a job as rejected, creating its row when the message named an id we never stored."""
        request, error = _storable(request), redact(error)
        now = utcnow()
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None:
                session.add(
                    JobRecord(
                        id=job_id,
                        kind=kind,
                        status=REJECTED,
                        request=request,
                        error=error,
                        cached=False,
                        attempts=0,
                        created_at=now,
                        finished_at=now,
                    )
                )
            elif record.status not in FINAL_STATUSES:
                record.status, record.error, record.finished_at = REJECTED, error, now

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
            # An attempt still open here was cut off by a worker that died: close it for the record.
            session.execute(
                update(AttemptRecord)
                .where(AttemptRecord.job_id == job_id, AttemptRecord.status == RUNNING)
                .values(status=LOST, error="the worker was lost during this attempt", finished_at=now)
            )
            record.status = RUNNING
            record.started_at = record.started_at or now
            record.lease_owner, record.lease_until = lease.owner, now + timedelta(seconds=lease.seconds)
            record.attempts += 1
            session.add(
                AttemptRecord(
                    job_id=job_id,
                    number=record.attempts,
                    status=RUNNING,
                    model=model,
                    provider=provider,
                    tier=tier,
                    worker=worker,
                    started_at=now,
                )
            )
            return record.attempts

    def renew_leases(self, owner: str, seconds: float) -> int:
        """Extend the lease of every job ``owner`` is running; returns how many."""
        with self.sessions.begin() as session:
            result = session.execute(
                update(JobRecord)
                .where(JobRecord.lease_owner == owner, JobRecord.status == RUNNING)
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
                    status=FAILED,
                    error=error,
                    http_status=http_status,
                    delay_s=delay_s,
                    latency_ms=latency_ms,
                    finished_at=utcnow(),
                )
            )

    def mark_retrying(self, job_id: str, delay_s: float) -> None:
        """The job waits ``delay_s`` for its retry's message."""
        self.set_due([job_id], delay_s, status=RETRYING)

    def set_due(self, job_ids: list[str], delay_s: float, *, status: str | None = None) -> None:
        """Note when the job's next message is due (a retry, a deferral, a requeue), so that a job waiting
        for it is never taken for lost; ``status`` also changes a job not final (to ``retrying``)."""
        values: dict[str, Any] = {"due_at": utcnow() + timedelta(seconds=delay_s)}
        if status is not None:
            values["status"] = status
        with self.sessions.begin() as session:
            session.execute(
                update(JobRecord)
                .where(JobRecord.id.in_(job_ids), JobRecord.status.not_in(FINAL_STATUSES))
                .values(**values)
                .execution_options(synchronize_session=False)
            )

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
        usage: Usage = result.usage
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status in FINAL_STATUSES:
                return
            record.status = SUCCEEDED
            record.model_used = result.model
            record.result = result.model_dump(mode="json")
            record.error = None
            record.finished_at = now
            record.latency_ms = elapsed_ms(record.created_at, now)
            session.execute(
                update(AttemptRecord)
                .where(AttemptRecord.job_id == job_id, AttemptRecord.number == number)
                .values(
                    status=SUCCEEDED,
                    finished_at=now,
                    latency_ms=model_latency_ms,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    total_tokens=usage.total_tokens,
                )
            )
            exists = session.scalar(select(UsageRecord.id).where(UsageRecord.job_id == job_id))
            if exists is None:
                session.add(
                    UsageRecord(
                        job_id=job_id,
                        kind=record.kind,
                        tier=record.tier,
                        model=result.model,
                        provider=provider,
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens,
                        total_tokens=usage.total_tokens,
                        cached=result.cached,
                        latency_ms=record.latency_ms,
                        created_at=now,
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
            record.attempts += 1
            session.add(
                AttemptRecord(
                    job_id=job_id,
                    number=record.attempts,
                    status=SKIPPED,
                    model=model,
                    provider=provider,
                    tier=tier,
                    worker=worker,
                    error=redact(reason),
                    started_at=now,
                    finished_at=now,
                )
            )

    def escalate(self, job_id: str, tier: str, queue: str) -> bool:
        """Move a job to another tier's queue (tier fallback); False when it already ended."""
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status in FINAL_STATUSES:
                return False
            record.tier, record.queue, record.status = tier, queue, RETRYING
            record.tier_hops += 1
            record.due_at = utcnow()
            return True

    def stale(self, older_than: datetime, limit: int = 10_000) -> list[JobView]:
        """Jobs that are lost: running under a lease that ran out before ``older_than`` (its worker died), or
        queued or retrying with a message due before ``older_than`` (a broker lost it). A job that a live
        worker runs, or that waits for a retry's or deferral's countdown, is never stale."""
        running_lost = (JobRecord.status == RUNNING) & (
            func.coalesce(JobRecord.lease_until, JobRecord.started_at, JobRecord.created_at) < older_than
        )
        waiting_lost = (JobRecord.status.in_([QUEUED, RETRYING])) & (
            func.coalesce(JobRecord.due_at, JobRecord.created_at) < older_than
        )
        with self.session() as session:
            rows = session.scalars(
                select(JobRecord).where(running_lost | waiting_lost).order_by(JobRecord.created_at).limit(limit)
            )
            return [JobView.of(row) for row in rows]

    def fail(self, job_id: str, error: str) -> None:
        now, error = utcnow(), redact(error)
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status in FINAL_STATUSES:
                return
            record.status, record.error, record.finished_at = FAILED, error, now
            record.latency_ms = elapsed_ms(record.created_at, now)

    # ---- reports -----------------------------------------------------------------------------------------

    def usage_by_model(self) -> list[UsageRow]:
        query = (
            select(
                UsageRecord.model,
                UsageRecord.tier,
                UsageRecord.kind,
                func.count(UsageRecord.id),
                func.sum(func.cast(UsageRecord.cached, type_=UsageRecord.prompt_tokens.type)),
                func.sum(UsageRecord.prompt_tokens),
                func.sum(UsageRecord.completion_tokens),
                func.sum(UsageRecord.total_tokens),
                func.avg(UsageRecord.latency_ms),
            )
            .group_by(UsageRecord.model, UsageRecord.tier, UsageRecord.kind)
            .order_by(UsageRecord.tier, UsageRecord.kind, UsageRecord.model)
        )
        with self.session() as session:
            return [
                UsageRow(
                    model=model,
                    tier=tier,
                    kind=kind,
                    requests=int(n),
                    cache_hits=int(hits or 0),
                    prompt_tokens=int(p or 0),
                    completion_tokens=int(c or 0),
                    total_tokens=int(t or 0),
                    avg_latency_ms=float(lat or 0.0),
                )
                for model, tier, kind, n, hits, p, c, t, lat in session.execute(query)
            ]

    def status_counts(self) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(select(JobRecord.status, func.count()).group_by(JobRecord.status))
            return {status: int(count) for status, count in rows}
