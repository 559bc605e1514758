"""The guards every state change holds, written once: a job that ended never changes, and a job that ends
leaves no attempt open."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Update, update

from llm_router.tasks.records import FINAL_STATUSES, AttemptStatus
from llm_router.tasks.store.base import ATTEMPTS, JOBS

LOST_ATTEMPT = "the worker was lost during this attempt"
CANCELLED_BY_CALLER = "cancelled by its caller"

# A job still open to change: not final. The SQL of the statements written out in text says the same.
NOT_FINAL: ColumnElement[bool] = JOBS.c.status.not_in(FINAL_STATUSES)
FINAL_SQL = ", ".join(f"'{status}'" for status in sorted(FINAL_STATUSES))


def close_lost_attempts(which: ColumnElement[bool], now: datetime | ColumnElement[datetime]) -> Update:
    """Close as lost the attempts left open among ``which``: a dead run's, or one that ran on while its job
    ended elsewhere (a job that ends leaves no attempt open)."""
    return (
        update(ATTEMPTS)
        .where(which, ATTEMPTS.c.status == AttemptStatus.RUNNING)
        .values(status=AttemptStatus.LOST, error=LOST_ATTEMPT, finished_at=now)
        .execution_options(synchronize_session=False)
    )
