"""What is written to the database: jobs, their attempts, usage, and runs (comparisons, evaluations and
pipelines, whose jobs carry the run's id as their batch id). Alembic owns the schema."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Final

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from llm_router.tasks.storable import StorableString, StorableText

JsonColumn = JSON().with_variant(JSONB(), "postgresql")


class JobStatus(StrEnum):
    """Where a job is in its life, as stored in ``jobs.status``."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"  # waiting for its next attempt
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"  # its request was invalid: never run
    CANCELLED = "cancelled"  # by its caller: never run, or stopped while it ran
    EXPIRED = "expired"  # not started by its deadline: never run

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


class AttemptStatus(StrEnum):
    """What became of one attempt on one model, as stored in ``attempts.status``."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # its job's caller stopped the run: what it made and used is recorded
    SKIPPED = "skipped"  # not made: the model was cooling down
    LOST = "lost"  # cut off by a worker that died, or left behind by a run that was taken over


class Outcome(StrEnum):
    """What running a job's message came to (never stored): the job's final status, or why it waits again."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    RETRYING = "retrying"  # a retry is scheduled
    DEFERRED = "deferred"  # its message was put off: a rate limit, a cooling chain, a live duplicate
    RUNNING = "running"  # another process runs it: this message was a duplicate and is dropped

    @property
    def final_status(self) -> JobStatus | None:
        """The job's final status when this outcome ended it; None when the job waits or runs on."""
        return JobStatus(self.value) if self.value in FINAL_STATUSES else None

    @classmethod
    def of(cls, status: JobStatus) -> Outcome:
        """The outcome of a message whose job was found in ``status`` (a job that waits was retried)."""
        return cls.RETRYING if status in WAITING_STATUSES else cls(status.value)


# The error of a job whose message the broker refused: submitted again with its idempotency key, it is sent again.
UNSENT: Final = "could not enqueue: the broker refused the message"
FINAL_STATUSES: Final = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED, JobStatus.CANCELLED, JobStatus.EXPIRED}
)
WAITING_STATUSES: Final = (JobStatus.QUEUED, JobStatus.RETRYING)  # waiting for a message to run them
UNFINISHED_STATUSES: Final = (*WAITING_STATUSES, JobStatus.RUNNING)


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """A stored time with its time zone (SQLite hands times back without one; they are UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JsonColumn,
        list[str]: JsonColumn,
    }


UNFINISHED = text("status IN ('queued', 'retrying', 'running')")


class JobRecord(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    tier: Mapped[str | None] = mapped_column(String(64))
    queue: Mapped[str | None] = mapped_column(String(64))
    requested_model: Mapped[str | None] = mapped_column(String(200))
    model_used: Mapped[str | None] = mapped_column(StorableString(200))
    request: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(StorableText)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    cached: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    batch_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # sha256 of (kind, tier, model, input, parameters): identical requests share it (see tasks/cache.py).
    cache_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The worker process running the job ("host#pid-namespace:pid") and until when its lease holds, on the
    # database's clock; the process renews it while it runs, so a job whose lease ran out was left by a worker
    # that died.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None]
    # When a waiting job's message is due (creation, or the end of a retry's or deferral's countdown): a
    # queued or retrying job long past it has lost its message.
    due_at: Mapped[datetime | None]
    tier_hops: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The caller's idempotency key: a second submission with it gets this job (unique: racing submissions of
    # one key record one job). Cleared once the key's time to live has passed, so the key can be used again.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # A pipeline's step: its position in the run named by batch_id. The worker that ends it starts the next.
    run_step: Mapped[int | None] = mapped_column(Integer)
    # Who submitted it through the HTTP gateway (an API key's tenant); None from Python and the CLI.
    tenant: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_jobs_cache_key_status", "cache_key", "status"),
        Index("uq_jobs_idempotency_key", "idempotency_key", unique=True),
        Index("ix_jobs_tenant_created_at", "tenant", "created_at"),
        # Only the jobs not yet final (what the sweeper looks through): a few rows where the table has millions.
        Index("ix_jobs_unfinished", "status", "created_at", postgresql_where=UNFINISHED, sqlite_where=UNFINISHED),
    )


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every job final (a comparison or evaluation may hold failed rows)
    FAILED = "failed"  # a pipeline's step failed
    TIMED_OUT = "timed_out"  # the caller stopped waiting with jobs still running (they go on)


class RunRecord(Base):
    """A comparison, an evaluation or a pipeline: what was asked, of which models, and what came of it."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_kind_created_at", "kind", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # compare, evaluate, pipeline
    name: Mapped[str] = mapped_column(StorableString(200))
    status: Mapped[str] = mapped_column(String(16))
    models: Mapped[list[str] | None]
    request: Mapped[dict[str, Any] | None]
    summary: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(StorableText)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class AttemptRecord(Base):
    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_attempts_job_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(StorableString(200))
    provider: Mapped[str | None] = mapped_column(String(32))
    tier: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(200))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(StorableText)
    delay_s: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class UsageRecord(Base):
    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # One usage row per job: a redelivered job cannot count twice.
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    tier: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(StorableString(200), index=True)
    provider: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    total_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached: Mapped[bool] = mapped_column(default=False)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    tenant: Mapped[str | None] = mapped_column(String(64))  # the job's

    # A tenant's tokens of the last minute (the gateway's --tpm) are summed from this index.
    __table_args__ = (Index("ix_usage_tenant_created_at", "tenant", "created_at"),)


class WebhookStatus(StrEnum):
    PENDING = "pending"  # a delivery is due or in flight
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # every attempt failed, or the receiver refused it for good (a 4xx)
    REFUSED = "refused"  # the address is not one the cluster may call


PENDING_WEBHOOK = text("status = 'pending'")


class WebhookRecord(Base):
    """A completion webhook: one per job or batch that asked for one (``subject`` is unique)."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject: Mapped[str] = mapped_column(String(80), unique=True)  # job:<id> or batch:<id>
    event: Mapped[str] = mapped_column(String(32))  # job.ended, batch.ended
    url: Mapped[str] = mapped_column(Text)
    queue: Mapped[str | None] = mapped_column(String(128))  # where its deliveries are published
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None]
    # While pending: when its next delivery is due, or, once a process took it, by when that delivery must be
    # recorded (the database's clock). Long past it, its message or its sender was lost: the sweeper sends it.
    due_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_webhooks_pending", "due_at", postgresql_where=PENDING_WEBHOOK, sqlite_where=PENDING_WEBHOOK),
    )


class WebhookAttemptRecord(Base):
    __tablename__ = "webhook_attempts"
    __table_args__ = (UniqueConstraint("webhook_id", "number", name="uq_webhook_attempts_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(StorableText)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKeyRecord(Base):
    """A key of the HTTP gateway: only its SHA-256 is kept (the key is shown once, when created)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to tell keys apart in lists
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    budget_tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class FileRecord(Base):
    """A file uploaded through the gateway (``POST /v1/files``): a Batch API input, kept for its tenant."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(StorableString(255))
    content: Mapped[str] = mapped_column(StorableText)
    bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ClusterMark(Base):
    """A value the whole cluster shares and no broker loss takes away (the broker epoch the sweeper last
    recovered from)."""

    __tablename__ = "cluster_marks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
