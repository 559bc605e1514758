"""Jobs taken by a worker process: started under its lease (many at once), the lease renewed while they run,
and a model passed over recorded as an attempt not made."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Float, bindparam, select, text, update

from llm_router.tasks.records import FINAL_STATUSES, AttemptRecord, AttemptStatus, JobRecord, JobStatus
from llm_router.tasks.redaction import redact
from llm_router.tasks.store.base import ATTEMPTS, StoreBase
from llm_router.tasks.store.lifecycle.guards import FINAL_SQL, LOST_ATTEMPT, close_lost_attempts
from llm_router.tasks.store.lifecycle.shapes import AttemptSpec, Started, Starts
from llm_router.tasks.store.views import Busy, Lease, leased_elsewhere

# ``start`` as one PostgreSQL statement for a set of jobs, on the database's clock read once: lock the jobs (in
# id order: two takers of overlapping sets never wait on each other in a circle); take each unless it ended or
# another owner's lease holds (an owner named in :dead is known dead: its lease no longer holds); close the
# attempt a lost run of it left open; open the new attempt. A row per job found: its status before, its lease
# (owner, seconds left), and its new attempt's number (NULL when it was not taken).
_START = text(
    f"""
    WITH clock AS (
        SELECT clock_timestamp() AS now
    ), job AS (
        SELECT id, status, lease_owner, lease_until FROM jobs WHERE id = ANY(CAST(:ids AS text[]))
        ORDER BY id FOR UPDATE
    ), started AS (
        UPDATE jobs SET status = '{JobStatus.RUNNING}', started_at = coalesce(jobs.started_at, clock.now),
            lease_owner = :owner, lease_until = clock.now + make_interval(secs => :lease_s),
            attempts = jobs.attempts + 1
        FROM job, clock
        WHERE jobs.id = job.id AND job.status NOT IN ({FINAL_SQL})
            AND NOT (job.status = '{JobStatus.RUNNING}' AND job.lease_owner IS NOT NULL AND job.lease_owner <> :owner
                     AND job.lease_owner <> ALL(CAST(:dead AS text[])) AND job.lease_until > clock.now)
        RETURNING jobs.id, jobs.attempts, jobs.created_at, jobs.tenant
    ), lost AS (
        UPDATE attempts SET status = '{AttemptStatus.LOST}', error = :lost_error, finished_at = clock.now
        FROM clock
        WHERE attempts.job_id IN (SELECT started.id FROM started JOIN job ON job.id = started.id
                                  WHERE job.status = '{JobStatus.RUNNING}')
            AND attempts.status = '{AttemptStatus.RUNNING}'
    ), opened AS (
        INSERT INTO attempts (job_id, number, status, model, provider, tier, worker, started_at)
        SELECT started.id, started.attempts, '{AttemptStatus.RUNNING}', :model, :provider, :tier, :worker, clock.now
        FROM started, clock
    )
    SELECT job.id, job.status, job.lease_owner, extract(epoch FROM job.lease_until - clock.now) AS lease_left_s,
        started.attempts AS number, started.created_at, started.tenant
    FROM job CROSS JOIN clock LEFT JOIN started ON started.id = job.id
    """
).bindparams(bindparam("lease_s", type_=Float()), bindparam("lost_error", LOST_ATTEMPT))


class Starting(StoreBase):
    def start(self, job_ids: list[str], spec: AttemptSpec, lease: Lease) -> Starts:
        """Take the jobs under ``lease`` and open an attempt for each. A job that ended (or was never recorded)
        is not taken, nor one that a live process runs under its lease (``busy``: its message waits until that
        lease could have run out); a job whose owner is known dead (``lease.alive``) is taken over. Each list
        of the answer keeps the order of ``job_ids``; the rows are locked in the order of their ids."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return Starts()
        if self.one_statement_writes:
            return self._start_in_statements(ids, spec, lease)
        return self._start_in_transaction(ids, spec, lease)

    def _start_in_statements(self, ids: list[str], spec: AttemptSpec, lease: Lease) -> Starts:
        rows = {row.id: row for row in self._start_statement(sorted(ids), spec, lease, dead=[])}
        # Jobs running under another owner's lease: only Python can tell whether that process is alive.
        held = [row for row in rows.values() if row.number is None and row.status == JobStatus.RUNNING]
        dead = sorted({str(row.lease_owner) for row in held if row.lease_owner and not lease.alive(row.lease_owner)})
        if dead:
            taken_over = sorted(row.id for row in held if row.lease_owner in dead)
            rows.update({row.id: row for row in self._start_statement(taken_over, spec, lease, dead)})
        starts = Starts()
        for job_id in ids:
            row = rows.get(job_id)
            if row is None or row.status in FINAL_STATUSES:
                starts.ended.append(job_id)
            elif row.number is not None:
                starts.started.append(Started(job_id, int(row.number), row.created_at, row.tenant))
            else:
                starts.busy[job_id] = Busy(str(row.lease_owner), max(0.0, float(row.lease_left_s or 0.0)))
        return starts

    def _start_statement(self, ids: list[str], spec: AttemptSpec, lease: Lease, dead: list[str]) -> list[Any]:
        parameters = {
            "ids": ids,
            "dead": dead,
            "owner": lease.owner,
            "lease_s": lease.seconds,
            "model": spec.model,
            "provider": spec.provider,
            "tier": spec.tier,
            "worker": spec.worker,
        }
        with self.autocommit.connect() as connection:
            return list(connection.execute(_START, parameters))

    def _start_in_transaction(self, ids: list[str], spec: AttemptSpec, lease: Lease) -> Starts:
        starts = Starts()
        with self.sessions.begin() as session:
            now = self.clock.read(session.connection())
            records = {
                record.id: record
                for record in session.scalars(
                    select(JobRecord).where(JobRecord.id.in_(ids)).order_by(JobRecord.id).with_for_update()
                )
            }
            for job_id in ids:
                record = records.get(job_id)
                if record is None or record.status in FINAL_STATUSES:
                    starts.ended.append(job_id)
                    continue
                busy = leased_elsewhere(record, lease, now)
                if busy is not None:
                    starts.busy[job_id] = busy
                    continue
                if record.status == JobStatus.RUNNING:  # only a running job can have an attempt left open
                    session.execute(close_lost_attempts(ATTEMPTS.c.job_id == job_id, now))
                record.status = JobStatus.RUNNING
                record.started_at = record.started_at or now
                record.lease_owner, record.lease_until = lease.owner, now + timedelta(seconds=lease.seconds)
                record.attempts += 1
                session.add(_attempt(job_id, record.attempts, AttemptStatus.RUNNING, spec, now))
                starts.started.append(Started(job_id, record.attempts, record.created_at, record.tenant))
        return starts

    def renew_leases(self, owner: str, seconds: float) -> int:
        """Extend the lease of every job ``owner`` is running; returns how many."""
        with self.sessions.begin() as session:
            result = session.execute(
                update(JobRecord)
                .where(JobRecord.lease_owner == owner, JobRecord.status == JobStatus.RUNNING)
                .values(lease_until=self.clock.now(seconds))
                .execution_options(synchronize_session=False)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def skip(self, job_id: str, spec: AttemptSpec, reason: str) -> None:
        """Record that a model was passed over (cooling down), so the job's path explains itself."""
        with self.sessions.begin() as session:
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None or record.status in FINAL_STATUSES:
                return
            now = self.clock.read(session.connection())
            record.attempts += 1
            attempt = _attempt(job_id, record.attempts, AttemptStatus.SKIPPED, spec, now)
            attempt.error, attempt.finished_at = redact(reason), now
            session.add(attempt)


def _attempt(job_id: str, number: int, status: AttemptStatus, spec: AttemptSpec, now: Any) -> AttemptRecord:
    return AttemptRecord(
        job_id=job_id,
        number=number,
        status=status,
        model=spec.model,
        provider=spec.provider,
        tier=spec.tier,
        worker=spec.worker,
        started_at=now,
    )
