"""One job's attempts on a worker: started under a lease, failed, passed over, or succeeded with its result
and usage. A job in a final state is never started again; an attempt left open by a dead worker is closed
as lost; usage is written once per job."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import Float, TextClause, bindparam, text, update

from llm_router.tasks.records import FINAL_STATUSES, AttemptRecord, JobRecord, Status, utcnow
from llm_router.tasks.redaction import redact
from llm_router.tasks.schemas import ClassifyResult, EmbedResult, GenerateResult
from llm_router.tasks.store.base import (
    ATTEMPTS,
    JOBS,
    LOST_ATTEMPT,
    USAGE,
    StoreBase,
    close_lost_attempts,
    elapsed_ms,
    insert_ignoring_duplicates,
    usage_row,
)
from llm_router.tasks.store.endings import CANCELLED_BY_CALLER
from llm_router.tasks.store.views import Busy, Lease, leased_elsewhere

Result = GenerateResult | EmbedResult | ClassifyResult
_FINAL_LIST = ", ".join(f"'{status}'" for status in sorted(FINAL_STATUSES))


# What the one-statement start returns when another owner's lease holds (the slow path decides).
_LEASED_ELSEWHERE = object()


def _opened(job_id: str, number: int, attempt: dict[str, str | None], now: datetime) -> dict[str, object]:
    """A running attempt's columns."""
    return {"job_id": job_id, "number": number, "status": Status.RUNNING, **attempt, "started_at": now}


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


# ``start_attempt`` as one PostgreSQL statement: lock the job; take it unless it ended or another owner's
# lease still holds; close the attempt a lost run of it left open; open the new attempt. The result row has
# the job's status before, and the new attempt's number (NULL when the job was not taken). Every time in it is
# the database's clock, read once.
_START_IN_ONE_STATEMENT = text(
    f"""
    WITH clock AS (
        SELECT clock_timestamp() AS now
    ), job AS (
        SELECT id, status, lease_owner, lease_until FROM jobs WHERE id = :job_id FOR UPDATE
    ), started AS (
        UPDATE jobs SET status = '{Status.RUNNING}', started_at = coalesce(jobs.started_at, clock.now),
            lease_owner = :owner, lease_until = clock.now + make_interval(secs => :lease_s),
            attempts = jobs.attempts + 1
        FROM job, clock
        WHERE jobs.id = job.id AND job.status NOT IN ({_FINAL_LIST})
            AND NOT (job.status = '{Status.RUNNING}' AND job.lease_owner IS NOT NULL
                     AND job.lease_owner <> :owner AND job.lease_until > clock.now)
        RETURNING jobs.id, jobs.attempts
    ), lost AS (
        UPDATE attempts SET status = '{Status.LOST}', error = :lost_error, finished_at = clock.now
        FROM clock
        WHERE job_id IN (SELECT started.id FROM started JOIN job ON job.status = '{Status.RUNNING}')
            AND status = '{Status.RUNNING}'
    ), opened AS (
        INSERT INTO attempts (job_id, number, status, model, provider, tier, worker, started_at)
        SELECT id, attempts, '{Status.RUNNING}', :model, :provider, :tier, :worker, clock.now FROM started, clock
    )
    SELECT job.status, started.attempts FROM job LEFT JOIN started ON true
    """
).bindparams(bindparam("lease_s", type_=Float()), bindparam("lost_error", LOST_ATTEMPT))


class AttemptWrites(StoreBase):
    def start_attempt(
        self, job_id: str, *, model: str, provider: str, tier: str | None, worker: str | None, lease: Lease
    ) -> int | Busy | None:
        """Mark the job running under ``lease`` and open an attempt; None when the job already ended (a
        redelivery), ``Busy`` when a live worker process runs it now (a duplicate message)."""
        attempt = {"model": model, "provider": provider, "tier": tier, "worker": worker}
        if self.one_statement_writes:
            started = self._start_in_one_statement(job_id, attempt, lease)
            if started is not _LEASED_ELSEWHERE:
                return started  # type: ignore[return-value]
            # Another owner's lease has not run out: only Python can tell whether that process is alive.
        return self._start_in_transaction(job_id, attempt, lease)

    def _start_in_transaction(self, job_id: str, attempt: dict[str, str | None], lease: Lease) -> int | Busy | None:
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status in FINAL_STATUSES:
                return None
            now = self.clock.read(session.connection())
            busy = leased_elsewhere(record, lease, now)
            if busy is not None:
                return busy
            if record.status == Status.RUNNING:  # only a running job can have an attempt left open
                session.execute(close_lost_attempts(ATTEMPTS.c.job_id == job_id, now))
            record.status = Status.RUNNING
            record.started_at = record.started_at or now
            record.lease_owner, record.lease_until = lease.owner, now + timedelta(seconds=lease.seconds)
            record.attempts += 1
            session.add(AttemptRecord(**_opened(job_id, record.attempts, attempt, now)))
            return record.attempts

    def _start_in_one_statement(self, job_id: str, attempt: dict[str, str | None], lease: Lease) -> int | object | None:
        """``start_attempt`` as one PostgreSQL statement: lock the job, take it unless it ended or another
        owner's lease still holds, close an attempt a lost run left open, open the new one."""
        parameters = {"job_id": job_id, "owner": lease.owner, "lease_s": lease.seconds, **attempt}
        with self.autocommit.connect() as connection:
            row = connection.execute(_START_IN_ONE_STATEMENT, parameters).first()
        if row is None or row.status in FINAL_STATUSES:
            return None
        return _LEASED_ELSEWHERE if row.attempts is None else int(row.attempts)

    def renew_leases(self, owner: str, seconds: float) -> int:
        """Extend the lease of every job ``owner`` is running; returns how many."""
        with self.sessions.begin() as session:
            result = session.execute(
                update(JobRecord)
                .where(JobRecord.lease_owner == owner, JobRecord.status == Status.RUNNING)
                .values(lease_until=self.clock.now(seconds))
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
                    finished_at=self.clock.now(),
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
        result: Result,
        provider: str,
        model_latency_ms: float,
        created_at: datetime | None = None,
        status: Status = Status.SUCCEEDED,
    ) -> None:
        """Record the job's result, close its attempt (and any other left open) and write its usage, unless the
        job already ended. ``created_at`` (the job's, when the caller read it) lets PostgreSQL do it in one
        statement. ``status`` is ``cancelled`` for a run its caller stopped: what it made and used is recorded
        all the same."""
        usage = result.usage
        attempt = {
            "status": status,
            "latency_ms": model_latency_ms,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
        if self.one_statement_writes and created_at is not None:
            self._succeed_in_one_statement(job_id, number, result, provider, attempt, status)
            return
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status in FINAL_STATUSES:
                return
            now = self.clock.read(session.connection())
            for name, value in _succeeded(result, status).items():
                setattr(record, name, value)
            record.finished_at, record.latency_ms = now, elapsed_ms(record.created_at, now)
            session.execute(
                update(AttemptRecord)
                .where(AttemptRecord.job_id == job_id, AttemptRecord.number == number)
                .values(**attempt, finished_at=now)
            )
            session.execute(close_lost_attempts((ATTEMPTS.c.job_id == job_id) & (ATTEMPTS.c.number != number), now))
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
                tenant=record.tenant,
            )
            session.execute(insert_ignoring_duplicates(session, USAGE, "job_id"), [row])

    def _succeed_in_one_statement(
        self, job_id: str, number: int, result: Result, provider: str, attempt: dict[str, object], status: Status
    ) -> None:
        job = _succeeded(result, status)
        usage = usage_row(
            job_id=job_id,
            kind="",  # taken from the job's row in the statement
            tier=None,
            model=result.model,
            provider=provider,
            usage=result.usage,
            cached=result.cached,
            latency_ms=None,
            now=utcnow(),
        )
        statement = _succeed_statement(tuple(job), tuple(attempt), tuple(usage))
        parameters = {
            "job_id": job_id,
            "number": number,
            **{f"job_{name}": value for name, value in job.items()},
            **{f"attempt_{name}": value for name, value in attempt.items()},
            **{f"usage_{name}": value for name, value in usage.items() if name not in _FROM_JOB},
        }
        with self.autocommit.connect() as connection:
            connection.execute(statement, parameters)


# The usage columns that the one-statement success takes from the job's row rather than from parameters.
_FROM_JOB = {
    "job_id": "id",
    "kind": "kind",
    "tier": "tier",
    "tenant": "tenant",
    "latency_ms": "latency_ms",
    "created_at": "finished_at",
}


@cache
def _succeed_statement(job: tuple[str, ...], attempt: tuple[str, ...], usage: tuple[str, ...]) -> TextClause:
    """``succeed`` as one PostgreSQL statement, for these columns of the job, the attempt and the usage row:
    the job ends succeeded unless it already ended, and only then are its attempt closed (and any other left
    open, as lost) and its usage written; its end and latency are the database clock's. Built once per
    process."""

    def assignments(prefix: str, names: tuple[str, ...]) -> str:
        return ", ".join(f"{name} = :{prefix}_{name}" for name in names)

    sql = f"""
    WITH clock AS (
        SELECT clock_timestamp() AS now
    ), done AS (
        UPDATE {JOBS.name} SET {assignments("job", job)}, finished_at = clock.now,
            latency_ms = extract(epoch FROM clock.now - {JOBS.name}.created_at) * 1000.0
        FROM clock
        WHERE {JOBS.name}.id = :job_id AND {JOBS.name}.status NOT IN ({_FINAL_LIST})
        RETURNING {JOBS.name}.id, kind, tier, tenant, latency_ms, finished_at
    ), closed AS (
        UPDATE {ATTEMPTS.name} SET {assignments("attempt", attempt)}, finished_at = clock.now
        FROM clock
        WHERE job_id IN (SELECT id FROM done) AND number = :number
    ), others AS (
        UPDATE {ATTEMPTS.name} SET status = '{Status.LOST}', error = :lost_error, finished_at = clock.now
        FROM clock
        WHERE job_id IN (SELECT id FROM done) AND number <> :number AND status = '{Status.RUNNING}'
    )
    INSERT INTO {USAGE.name} ({", ".join(usage)})
    SELECT {", ".join(f"done.{_FROM_JOB[name]}" if name in _FROM_JOB else f":usage_{name}" for name in usage)}
    FROM done
    ON CONFLICT (job_id) DO NOTHING
    """
    types = [
        *(bindparam(f"job_{name}", type_=JOBS.c[name].type) for name in job),
        *(bindparam(f"attempt_{name}", type_=ATTEMPTS.c[name].type) for name in attempt),
        *(bindparam(f"usage_{name}", type_=USAGE.c[name].type) for name in usage if name not in _FROM_JOB),
        bindparam("lost_error", LOST_ATTEMPT),
    ]
    return text(sql).bindparams(*types)


def _succeeded(result: Result, status: Status) -> dict[str, object]:
    """A succeeded (or stopped: cancelled) job's new columns, but for when it ended and its latency."""
    return {
        "status": status,
        "model_used": result.model,
        "result": result.model_dump(mode="json"),
        "error": None if status == Status.SUCCEEDED else CANCELLED_BY_CALLER,
    }
