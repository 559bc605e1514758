"""What follows a job's final record, in one place for the one-job path and for jobs run together: its
waiting callers are woken first, then a pipeline's next step starts, its token stream is closed and its
completion webhook is claimed. Each runs after the final record committed, so whoever it wakes finds the job
ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_router.tasks.records import Status

if TYPE_CHECKING:
    from llm_router.tasks.schemas import ClassifyRequest, EmbedRequest, GenerateRequest
    from llm_router.workers.runtime import WorkerRuntime

    Request = GenerateRequest | EmbedRequest | ClassifyRequest


@dataclass(frozen=True)
class Ended:
    """A job that reached its final record, with what its ending sets off."""

    job_id: str
    status: Status
    queue: str | None = None
    batch_id: str | None = None
    run_step: int | None = None
    stream: bool = False
    callback_url: str | None = None
    batch_callback: bool = False

    @classmethod
    def of(
        cls, job_id: str, status: Status, request: dict[str, Any], *, queue: str | None, run_step: int | None = None
    ) -> Ended:
        """From the job's request as stored (or dumped from its parsed form)."""
        return cls(
            job_id,
            status,
            queue,
            request.get("batch_id"),
            run_step,
            bool(request.get("stream")),
            request.get("callback_url"),
            bool(request.get("batch_callback")),
        )


def ended_request(job_id: str, status: Status, request: Request, *, queue: str | None) -> Ended:
    """From a parsed request (jobs run together)."""
    return Ended(
        job_id,
        status,
        queue,
        request.batch_id,
        None,
        bool(getattr(request, "stream", False)),
        request.callback_url,
        request.batch_callback,
    )


def after_final(runtime: WorkerRuntime, ended: list[Ended]) -> None:
    if runtime.notices is not None and ended:
        runtime.notices.publish([job.job_id for job in ended])  # its callers wake now: before any other work
    for job in ended:
        if job.run_step is not None and job.batch_id is not None:
            # A pipeline's step ended (or its message came again after it did): carry the pipeline on.
            runtime.step_ended(job.batch_id)
        if job.stream and runtime.streams is not None:
            runtime.streams.end(job.job_id, job.status)  # after the final record: a reader that sees the end finds it
        if runtime.webhooks is not None and (job.callback_url or job.batch_callback):
            batch_id = job.batch_id if job.batch_callback else None
            runtime.webhooks.job_ended(job.job_id, job.queue, job.callback_url, batch_id)
