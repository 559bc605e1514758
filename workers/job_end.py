"""What follows a job's final record: a list of small hooks, registered once when the worker's runtime is
built, run in that order for the one-job path and for jobs run together alike. The callers waiting for the
jobs are woken first; then their streams are closed, a pipeline's next step starts and completion webhooks
are claimed. Each runs after the final record committed, so whoever it wakes finds the job ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_router.tasks.records import JobStatus

if TYPE_CHECKING:
    from llm_router.broker.notifications import DoneNotices
    from llm_router.tasks.schemas import ClassifyRequest, EmbedRequest, GenerateRequest
    from llm_router.workers.streaming import StreamWriter
    from llm_router.workers.webhooks import Webhooks

    Request = GenerateRequest | EmbedRequest | ClassifyRequest


@dataclass(frozen=True)
class Ended:
    """A job that reached its final record, with what its ending sets off."""

    job_id: str
    status: JobStatus
    queue: str | None = None
    batch_id: str | None = None
    run_step: int | None = None
    stream: bool = False
    callback_url: str | None = None
    batch_callback: bool = False

    @classmethod
    def of(
        cls, job_id: str, status: JobStatus, request: dict[str, Any], *, queue: str | None, run_step: int | None = None
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


def ended_request(job_id: str, status: JobStatus, request: Request, *, queue: str | None) -> Ended:
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


# What follows the final records of some jobs; registered once, when the worker's runtime is built.
EndHook = Callable[[list[Ended]], None]


def after_final(hooks: list[EndHook], ended: list[Ended]) -> None:
    """Run a runtime's end hooks, in the order they were registered, for jobs whose final record committed."""
    if ended:
        for hook in hooks:
            hook(ended)


def wake_callers(notices: DoneNotices) -> EndHook:
    """The jobs' waiting callers wake now: the first hook, before any other work."""
    return lambda ended: notices.publish([job.job_id for job in ended])


def close_streams(streams: StreamWriter) -> EndHook:
    """A streamed generation's stream gets its end entry, after the final record: a reader that sees the end
    finds the job ended."""

    def close(ended: list[Ended]) -> None:
        for job in ended:
            if job.stream:
                streams.end(job.job_id, job.status)

    return close


def carry_pipelines_on(step_ended: Callable[[str], None]) -> EndHook:
    """A pipeline's step ended (or its message came again after it did): its run goes on to the next step."""

    def carry_on(ended: list[Ended]) -> None:
        for job in ended:
            if job.run_step is not None and job.batch_id is not None:
                step_ended(job.batch_id)

    return carry_on


def claim_webhooks(webhooks: Webhooks) -> EndHook:
    """A job that asked for a completion webhook has it claimed and sent; a batch's, once its last job ended."""

    def claim(ended: list[Ended]) -> None:
        for job in ended:
            if job.callback_url or job.batch_callback:
                batch_id = job.batch_id if job.batch_callback else None
                webhooks.job_ended(job.job_id, job.queue, job.callback_url, batch_id)

    return claim
