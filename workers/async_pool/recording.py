"""Recording the answers of a flush: in one statement, each job's line after, what follows their ends, and the
calls counted towards their models' health."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_router.tasks.records import JobStatus
from llm_router.workers.async_pool.starting import Running
from llm_router.workers.backends.base import Result
from llm_router.workers.execution import INFRASTRUCTURE, end_unrecorded, log_success, record_successes, success_of
from llm_router.workers.job_end import Ended, after_final

if TYPE_CHECKING:
    from llm_router.workers.runtime import WorkerRuntime


@dataclass(frozen=True)
class Answered:
    """A call's answer for one of its jobs, waiting for the next flush."""

    running: Running
    result: Result
    latency_ms: float


def record_answers(runtime: WorkerRuntime, batch: list[Answered]) -> None:
    """In the records thread: the answers in one statement, each job's line, what follows their ends."""
    successes = [
        success_of(runtime, a.running.job.id, a.running.number, a.running.spec, a.result, a.latency_ms) for a in batch
    ]
    statuses = {success.job_id: success.job_status for success in successes}
    try:
        runtime.store.succeed(successes)
    except INFRASTRUCTURE:
        raise
    except Exception:  # one answer the database refuses must not fail the others: each alone
        for success in successes:
            try:
                runtime.store.succeed([success])
            except INFRASTRUCTURE:
                raise
            except Exception as exc:
                end_unrecorded(runtime.store, success.job_id, exc)
                statuses[success.job_id] = JobStatus.FAILED
    ended = [
        Ended.of(job.id, statuses[job.id], job.request or {}, queue=job.queue, run_step=job.run_step)
        for job in (answered.running.job for answered in batch)
    ]
    runtime.running.release([answered.running.job.id for answered in batch])
    after_final(runtime.end_hooks, ended)  # first: their callers wake
    for answered, success in zip(batch, successes, strict=True):
        if statuses[success.job_id] == success.job_status:
            log_success(success, answered.running.item.kind, answered.running.spec)
    record_successes(runtime.cooldowns, [answered.running.spec.model for answered in batch])
