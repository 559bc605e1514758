"""Retention: old final jobs are pruned, whole or down to their bookkeeping, and the tables' sizes are known.

Only jobs in a final state are ever pruned, in chunks (short transactions, so workers writing meanwhile never
wait long). Pruned whole, a job goes with its attempts and its usage row (they cascade). Pruned to its
results, a job keeps its row, attempts and usage (the usage report stays whole) and loses its request and
result, which are most of its bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, null, select, text, update

from llm_router.tasks.records import (
    FINAL_STATUSES,
    FileRecord,
    JobRecord,
    RunRecord,
    RunStatus,
    WebhookAttemptRecord,
    WebhookRecord,
    WebhookStatus,
)
from llm_router.tasks.store.base import ATTEMPTS, JOBS, RUNS, USAGE, WEBHOOKS, StoreBase

PRUNE_CHUNK = 5_000


@dataclass(frozen=True)
class Pruned:
    jobs: int  # jobs removed, or emptied of request and result
    results_only: bool
    dry_run: bool


@dataclass(frozen=True)
class TableSize:
    rows: int
    bytes: int | None  # with indexes and TOAST; None where the database does not say
    estimated: bool = False  # rows from PostgreSQL's statistics (a large table), not counted


# Below this many rows by PostgreSQL's statistics a table is counted exactly: its statistics may be far off
# (none at all before the first ANALYZE, which made `status` say "jobs 0 rows" of a table of 158).
COUNT_EXACTLY_BELOW = 1_000_000


class Retention(StoreBase):
    def prune(self, created_before: datetime, *, results_only: bool = False, dry_run: bool = False) -> Pruned:
        """Prune the jobs created before ``created_before`` that ended: remove them, or with ``results_only``
        clear their request and result. ``dry_run`` only counts them. (Creation time, which is indexed: a job
        ends seconds to minutes after it is created.)"""
        old = [JobRecord.created_at < created_before, JobRecord.status.in_(FINAL_STATUSES)]
        if results_only:
            old.append(JobRecord.request.is_not(None) | JobRecord.result.is_not(None))
        if dry_run:
            with self.session() as session:
                return Pruned(int(session.scalar(select(func.count()).where(*old)) or 0), results_only, True)
        self._prune_runs(created_before, results_only)
        if not results_only:
            self._prune_webhooks(created_before)
            with self.sessions.begin() as session:  # uploaded Batch API inputs
                session.execute(delete(FileRecord).where(FileRecord.created_at < created_before))
        pruned = 0
        while True:
            with self.sessions.begin() as session:
                ids = list(session.scalars(select(JobRecord.id).where(*old).limit(PRUNE_CHUNK)))
                if not ids:
                    return Pruned(pruned, results_only, False)
                if results_only:
                    session.execute(
                        update(JobRecord)
                        .where(JobRecord.id.in_(ids))
                        .values(request=null(), result=null())  # SQL NULL, not a JSON null
                        .execution_options(synchronize_session=False)
                    )
                else:
                    # Children first: SQLite enforces foreign keys only when told to, so no cascade is relied on.
                    for table in (USAGE, ATTEMPTS):
                        session.execute(delete(table).where(table.c.job_id.in_(ids)))
                    session.execute(delete(JOBS).where(JOBS.c.id.in_(ids)))
                pruned += len(ids)
            if len(ids) < PRUNE_CHUNK:
                return Pruned(pruned, results_only, False)

    def _prune_runs(self, created_before: datetime, results_only: bool) -> None:
        """Ended runs go with their jobs; pruned to their results, they keep their figures and lose what was
        asked (a pipeline's text)."""
        old = [RunRecord.created_at < created_before, RunRecord.status != RunStatus.RUNNING]
        with self.sessions.begin() as session:
            if results_only:
                session.execute(update(RunRecord).where(*old).values(request=null()))
            else:
                session.execute(delete(RunRecord).where(*old))

    def _prune_webhooks(self, created_before: datetime) -> None:
        """Webhooks that ended go with their delivery attempts."""
        old = select(WebhookRecord.id).where(
            WebhookRecord.created_at < created_before, WebhookRecord.status != WebhookStatus.PENDING
        )
        with self.sessions.begin() as session:
            session.execute(delete(WebhookAttemptRecord).where(WebhookAttemptRecord.webhook_id.in_(old)))
            session.execute(delete(WebhookRecord).where(WebhookRecord.id.in_(old)))

    def table_sizes(self) -> dict[str, TableSize]:
        """Rows and bytes of the jobs, attempts, usage, runs and webhooks tables."""
        tables = [table.name for table in (JOBS, ATTEMPTS, USAGE, RUNS, WEBHOOKS)]
        with self.session() as session:
            if session.get_bind().dialect.name == "postgresql":
                rows = session.execute(
                    text(
                        "SELECT relname, greatest(reltuples, 0)::bigint, pg_total_relation_size(oid) "
                        "FROM pg_class WHERE relname = ANY(:tables) AND relkind = 'r'"
                    ),
                    {"tables": tables},
                )
                sizes = {}
                for name, estimate, size in rows:
                    if estimate >= COUNT_EXACTLY_BELOW:
                        sizes[name] = TableSize(int(estimate), int(size), estimated=True)
                    else:
                        counted = session.scalar(text(f'SELECT count(*) FROM "{name}"')) or 0
                        sizes[name] = TableSize(int(counted), int(size))
                return sizes
            return {
                name: TableSize(int(session.scalar(text(f'SELECT count(*) FROM "{name}"')) or 0), None)
                for name in tables
            }
