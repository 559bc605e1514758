"""What the store hands out: read-only views of jobs and attempts, and the lease a worker holds on a job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row

from llm_router.tasks.records import (
    FINAL_STATUSES,
    AttemptRecord,
    AttemptStatus,
    JobRecord,
    JobStatus,
    RunRecord,
    RunStatus,
    aware,
)


def _fields(view: type, record: object) -> dict[str, Any]:
    """The record's columns that the view holds."""
    return {name: getattr(record, name) for name in view.__dataclass_fields__}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class JobView:
    """A read-only snapshot of a job record."""

    id: str
    kind: str
    status: JobStatus
    tier: str | None
    queue: str | None
    requested_model: str | None
    model_used: str | None
    request: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    latency_ms: float | None
    cached: bool
    attempts: int
    batch_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    tier_hops: int = 0
    cache_key: str | None = None
    lease_owner: str | None = None
    due_at: datetime | None = None
    run_step: int | None = None
    tenant: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def of(cls, record: JobRecord | Row[Any]) -> JobView:
        return cls(**{**_fields(cls, record), "status": JobStatus(record.status)})

    def document(self) -> dict[str, Any]:
        """The job's record as JSON for its caller (``--json`` output, a webhook's body): no request."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "tier": self.tier,
            "queue": self.queue,
            "model": self.model_used,
            "batch_id": self.batch_id,
            "latency_ms": self.latency_ms,
            "attempts": self.attempts,
            "cached": self.cached,
            "error": self.error,
            "result": self.result,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


def past_deadline(job: JobView, deadline_s: float | None) -> bool:
    """Whether a job is past its deadline (seconds from its submission), by this host's clock: what a caller's
    wait goes by (the worker's ``expire`` judges on the database's)."""
    return deadline_s is not None and datetime.now(UTC) > aware(job.created_at) + timedelta(seconds=deadline_s)


def _iso(moment: datetime | None) -> str | None:
    return aware(moment).isoformat() if moment is not None else None


@dataclass(frozen=True)
class RunView:
    """A read-only snapshot of a run: a comparison, an evaluation or a pipeline."""

    id: str
    kind: str
    name: str
    status: RunStatus
    models: list[str] | None
    request: dict[str, Any] | None
    summary: dict[str, Any] | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    @property
    def is_final(self) -> bool:
        return self.status != RunStatus.RUNNING

    @classmethod
    def of(cls, record: RunRecord) -> RunView:
        return cls(**{**_fields(cls, record), "status": RunStatus(record.status)})


@dataclass(frozen=True)
class Busy:
    """A job that a live worker process is running now: it must not be started a second time."""

    owner: str
    remaining_s: float


@dataclass(frozen=True)
class Lease:
    """Who takes a job (``owner``: "host#pid-namespace:pid"), for how long, and how to tell whether another
    owner is still alive (a process of this pid namespace can be checked at once; one elsewhere only by its
    lease)."""

    owner: str
    seconds: float
    alive: Callable[[str], bool]


def lease_end(record: JobRecord, now: datetime) -> datetime:
    """When the job's lease runs out (long ago when it has none), comparable with ``now``."""
    until = record.lease_until
    if until is None:
        return datetime.min.replace(tzinfo=now.tzinfo)
    return until if until.tzinfo else until.replace(tzinfo=now.tzinfo)  # SQLite keeps no time zone


def leased_elsewhere(record: JobRecord, lease: Lease, now: datetime) -> Busy | None:
    """The running job's live lease held by another process, if any."""
    owner, until = record.lease_owner, lease_end(record, now)
    if record.status != JobStatus.RUNNING or owner is None or owner == lease.owner:
        return None
    if until <= now or not lease.alive(owner):
        return None
    return Busy(owner, (until - now).total_seconds())


@dataclass(frozen=True)
class AttemptView:
    number: int
    status: AttemptStatus
    model: str | None
    provider: str | None
    tier: str | None
    worker: str | None
    error: str | None
    http_status: int | None
    delay_s: float | None
    latency_ms: float | None
    total_tokens: int | None
    started_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, record: AttemptRecord) -> AttemptView:
        return cls(**{**_fields(cls, record), "status": AttemptStatus(record.status)})


@dataclass(frozen=True)
class UsageRow:
    model: str
    tier: str | None
    kind: str
    requests: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    avg_latency_ms: float
