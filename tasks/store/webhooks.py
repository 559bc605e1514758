"""Completion webhooks: claimed once per job or batch, then each delivery attempt recorded."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update

from llm_router.tasks.records import (
    UNFINISHED_STATUSES,
    JobRecord,
    RunRecord,
    RunStatus,
    WebhookAttemptRecord,
    WebhookRecord,
    WebhookStatus,
    utcnow,
)
from llm_router.tasks.redaction import redact
from llm_router.tasks.store.base import WEBHOOKS, StoreBase, insert_ignoring_duplicates


@dataclass(frozen=True)
class WebhookAttemptView:
    number: int
    status_code: int | None
    error: str | None
    latency_ms: float | None
    at: datetime


@dataclass(frozen=True)
class WebhookView:
    id: str
    subject: str
    event: str
    url: str
    queue: str | None
    status: str
    attempts: int
    created_at: datetime
    finished_at: datetime | None
    tries: tuple[WebhookAttemptView, ...] = ()


def _view(record: WebhookRecord, tries: tuple[WebhookAttemptView, ...] = ()) -> WebhookView:
    fields = {name: getattr(record, name) for name in WebhookView.__dataclass_fields__ if name != "tries"}
    return WebhookView(**fields, tries=tries)


class WebhookRecords(StoreBase):
    def claim_webhook(self, subject: str, event: str, url: str, queue: str | None) -> str | None:
        """Record the webhook of ``subject`` (``job:<id>``, ``batch:<id>``); its id when this call recorded it,
        None when it was recorded before (a redelivered message, another worker): it is delivered once."""
        webhook_id = str(uuid.uuid4())
        row: dict[str, Any] = {
            "id": webhook_id,
            "subject": subject,
            "event": event,
            "url": url,
            "queue": queue,
            "status": WebhookStatus.PENDING,
            "attempts": 0,
            "created_at": self.clock.now(),  # its first delivery is due now, on the database's clock
        }
        with self.sessions.begin() as session:
            result = session.execute(insert_ignoring_duplicates(session, WEBHOOKS, "subject").values(**row))
            return webhook_id if getattr(result, "rowcount", 0) else None

    def take_webhook(self, webhook_id: str, hold_s: float) -> bool:
        """Take a pending webhook whose delivery is due, for one delivery that must be recorded within ``hold_s``;
        False when it ended, is not due yet, or another process has it (a duplicate message): one sender at a
        time."""
        due = func.coalesce(WebhookRecord.due_at, WebhookRecord.created_at) <= self.clock.now()
        with self.session() as session:
            result = session.execute(
                update(WebhookRecord)
                .where(WebhookRecord.id == webhook_id, WebhookRecord.status == WebhookStatus.PENDING, due)
                .values(due_at=self.clock.now(hold_s))
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(result, "rowcount", 0))

    def overdue_webhooks(self, late_by_s: float, limit: int = 500) -> list[WebhookView]:
        """Pending webhooks whose delivery was due, or had to be recorded, ``late_by_s`` ago or more: their
        message, or the process sending them, was lost. Each is due again now."""
        due = func.coalesce(WebhookRecord.due_at, WebhookRecord.created_at)
        with self.sessions.begin() as session:
            records = list(
                session.scalars(
                    select(WebhookRecord)
                    .where(WebhookRecord.status == WebhookStatus.PENDING, due < self.clock.now(-late_by_s))
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            if records:
                session.execute(
                    update(WebhookRecord)
                    .where(WebhookRecord.id.in_([record.id for record in records]))
                    .values(due_at=self.clock.now())
                    .execution_options(synchronize_session=False)
                )
            return [_view(record) for record in records]

    def webhook(self, webhook_id: str) -> WebhookView | None:
        with self.session() as session:
            record = session.get(WebhookRecord, webhook_id)
            return _view(record) if record is not None else None

    def webhooks_of(self, subject: str) -> list[WebhookView]:
        """The webhook of a job (``job:<id>``) or batch (``batch:<id>``), with its attempts."""
        with self.session() as session:
            records = list(session.scalars(select(WebhookRecord).where(WebhookRecord.subject == subject)))
            views = []
            for record in records:
                tries = session.scalars(
                    select(WebhookAttemptRecord)
                    .where(WebhookAttemptRecord.webhook_id == record.id)
                    .order_by(WebhookAttemptRecord.number)
                )
                attempts = tuple(
                    WebhookAttemptView(t.number, t.status_code, t.error, t.latency_ms, t.at) for t in tries
                )
                views.append(_view(record, attempts))
            return views

    def record_delivery(
        self,
        webhook_id: str,
        *,
        status_code: int | None,
        error: str | None,
        latency_ms: float | None,
        outcome: WebhookStatus,
        retry_in_s: float = 0.0,
    ) -> int:
        """Record one delivery attempt and where the webhook stands after it (still pending: its next delivery
        is due in ``retry_in_s``); the attempt's number."""
        with self.sessions.begin() as session:
            record = session.get(WebhookRecord, webhook_id, with_for_update=True)
            assert record is not None
            now = self.clock.read(session.connection())
            record.attempts += 1
            record.status = outcome
            if outcome != WebhookStatus.PENDING:
                record.finished_at = now
            else:
                record.due_at = now + timedelta(seconds=retry_in_s)
            session.add(
                WebhookAttemptRecord(
                    webhook_id=webhook_id,
                    number=record.attempts,
                    status_code=status_code,
                    error=redact(error) if error else None,
                    latency_ms=latency_ms,
                    at=now,
                )
            )
            return record.attempts

    def end_batch_if_done(self, batch_id: str) -> bool:
        """End the run of a batch with a webhook once none of its jobs is unfinished; True for the one caller
        that ended it. Each caller asks after its own jobs' final records committed, so the last to commit
        always finds the batch done."""
        unfinished = exists().where(JobRecord.batch_id == batch_id, JobRecord.status.in_(UNFINISHED_STATUSES))
        with self.sessions.begin() as session:
            result = session.execute(
                update(RunRecord)
                .where(
                    RunRecord.id == batch_id,
                    RunRecord.kind == "batch",
                    RunRecord.status == RunStatus.RUNNING,
                    ~unfinished,
                )
                .values(status=RunStatus.SUCCEEDED, finished_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(result, "rowcount", 0))
