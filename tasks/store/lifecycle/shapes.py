"""What the lifecycle's state changes take and hand back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from llm_router.tasks.records import AttemptStatus, JobStatus
from llm_router.tasks.schemas import ClassifyResult, EmbedResult, GenerateResult
from llm_router.tasks.store.views import Busy

Result = GenerateResult | EmbedResult | ClassifyResult


@dataclass(frozen=True)
class AttemptSpec:
    """What an attempt is made on: the model, its provider, the tier, the worker (Celery's node name)."""

    model: str
    provider: str
    tier: str | None
    worker: str | None


@dataclass(frozen=True)
class Started:
    """A job taken under this process's lease, and its new attempt's number."""

    job_id: str
    number: int
    created_at: datetime
    tenant: str | None = None


@dataclass(frozen=True)
class Starts:
    """What ``start`` made of a set of jobs: those started, those that ended (or were never recorded), and those
    a live process runs now (put their messages off until its lease could have run out)."""

    started: list[Started] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    busy: dict[str, Busy] = field(default_factory=dict)


@dataclass(frozen=True)
class Success:
    """A started job's answer; ``cancelled`` for a run its caller stopped (the job and its attempt end
    ``cancelled``, and what the run made and used is recorded all the same)."""

    job_id: str
    number: int
    result: Result
    provider: str
    model_latency_ms: float
    cancelled: bool = False

    @property
    def job_status(self) -> JobStatus:
        return JobStatus.CANCELLED if self.cancelled else JobStatus.SUCCEEDED

    @property
    def attempt_status(self) -> AttemptStatus:
        return AttemptStatus.CANCELLED if self.cancelled else AttemptStatus.SUCCEEDED


@dataclass(frozen=True)
class AttemptFailure:
    """An attempt that failed; ``delay_s`` is the policy's wait before the retry it led to."""

    job_id: str
    number: int
    error: str
    http_status: int | None = None
    delay_s: float | None = None
    latency_ms: float | None = None


@dataclass(frozen=True)
class Cancellation:
    cancelled: list[str]  # waiting jobs, ended now: they never run
    running: list[str]  # running now: their workers are asked to stop them
    ended: list[str]  # already final, or unknown: left as they are
