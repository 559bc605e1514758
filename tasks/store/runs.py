"""Runs: comparisons, evaluations and pipelines, recorded with what was asked and what came of it. A run's
jobs carry its id as their batch id."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import exists, insert, select, update

from llm_router.tasks.records import UNFINISHED_STATUSES, JobRecord, RunRecord, RunStatus, utcnow
from llm_router.tasks.redaction import redact
from llm_router.tasks.store.base import RUNS, StoreBase, insert_ignoring_duplicates, page_after
from llm_router.tasks.store.views import JobView, RunView


class RunRecords(StoreBase):
    def create_run(
        self,
        run_id: str,
        kind: str,
        name: str,
        models: list[str],
        request: dict[str, Any] | None = None,
        *,
        if_absent: bool = False,
    ) -> RunView:
        """Record a new run; with ``if_absent``, a run of that id recorded before is kept as it is."""
        row = {
            "id": run_id,
            "kind": kind,
            "name": name[:200],
            "status": RunStatus.RUNNING,
            "models": models,
            "request": request,
            "created_at": utcnow(),
        }
        with self.sessions.begin() as session:
            statement = insert_ignoring_duplicates(session, RUNS, "id") if if_absent else insert(RunRecord)
            session.execute(statement, [row])
        view = self.get_run(run_id)
        assert view is not None
        return view

    def get_run(self, run_id: str) -> RunView | None:
        with self.session() as session:
            record = session.get(RunRecord, run_id)
            return RunView.of(record) if record else None

    def runs(self, kind: str | None = None, limit: int = 50) -> list[RunView]:
        """The newest runs first."""
        query = select(RunRecord).order_by(RunRecord.created_at.desc()).limit(limit)
        if kind is not None:
            query = query.where(RunRecord.kind == kind)
        with self.session() as session:
            return [RunView.of(record) for record in session.scalars(query)]

    def tenant_runs(self, kind: str, tenant: str, *, after: str | None = None, limit: int = 20) -> list[RunView]:
        """A tenant's runs of ``kind`` (those whose request names the tenant: the Batch API's), newest first,
        ``limit`` of them after the run ``after`` (a cursor: the last id of the page before)."""
        columns = (RunRecord.created_at, RunRecord.id)
        owned = (RunRecord.kind == kind, RunRecord.request["tenant"].as_string() == tenant)
        with self.session() as session:
            query = page_after(session, select(RunRecord).where(*owned), columns, after, owned, limit=limit)
            return [RunView.of(record) for record in session.scalars(query)]

    def update_run(self, run_id: str, summary: dict[str, Any]) -> None:
        """The figures so far of a run still running."""
        with self.sessions.begin() as session:
            session.execute(
                update(RunRecord)
                .where(RunRecord.id == run_id, RunRecord.status == RunStatus.RUNNING)
                .values(summary=summary)
            )

    def finish_run(
        self, run_id: str, status: RunStatus, summary: dict[str, Any] | None, error: str | None = None
    ) -> bool:
        """End a running run; False when it had ended already (a repeated step, a late caller)."""
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": redact(error) if error else None}
        if summary is not None:
            values["summary"] = summary
        with self.sessions.begin() as session:
            result = session.execute(
                update(RunRecord).where(RunRecord.id == run_id, RunRecord.status == RunStatus.RUNNING).values(**values)
            )
            return bool(getattr(result, "rowcount", 0))

    def run_jobs(self, run_id: str) -> list[JobView]:
        """The jobs of a run, oldest first."""
        query = select(JobRecord).where(JobRecord.batch_id == run_id).order_by(JobRecord.created_at, JobRecord.id)
        with self.session() as session:
            return [JobView.of(record) for record in session.scalars(query)]

    def stalled_pipelines(self, created_before: datetime, limit: int = 500) -> list[str]:
        """Pipelines still running with no step queued or running: their last step ended, and the worker that
        ended it died before it started the next (or is about to)."""
        step_in_flight = exists().where(JobRecord.batch_id == RunRecord.id, JobRecord.status.in_(UNFINISHED_STATUSES))
        query = (
            select(RunRecord.id)
            .where(
                RunRecord.kind == "pipeline",
                RunRecord.status == RunStatus.RUNNING,
                RunRecord.created_at < created_before,
                ~step_in_flight,
            )
            .limit(limit)
        )
        with self.session() as session:
            return list(session.scalars(query))
