"""What happens to a job on a worker: validate, run along its model chain, record every step.

A failure goes through the retry policy: a retry is re-published with a countdown through ``reschedule``
(no worker slot sleeps), a spent or broken model hands over to the next one of the chain, and a
permanent refusal fails the job at once. ``run_job`` never raises for a problem with the job itself;
only infrastructure errors (the database is gone) propagate to Celery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.routing import route
from tasks.errors import InvalidRequest, RouterError
from tasks.messages import Cursor, JobMessage
from tasks.schemas import (
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    Kind,
    parse_request,
)

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

Request = GenerateRequest | EmbedRequest | ClassifyRequest
Result = GenerateResult | EmbedResult | ClassifyResult
# (job id, queue, where to resume, seconds to wait): publishes the job again.
Reschedule = Callable[[str, str, Cursor, float], None]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_job(runtime: WorkerRuntime, kind: Kind, message: JobMessage, worker: str | None, reschedule: Reschedule) -> str:
    """Run one step of a job and return its status afterwards (a final one, or ``retrying``)."""
    store = runtime.store
    job = store.get(message.job_id)
    if job is None and message.request is None:
        store.reject(
            message.job_id, kind, f"job_id: no job {message.job_id} is recorded and the message has no request"
        )
        return "rejected"
    if job is not None and job.is_final:
        log.info("job %s is already %s; redelivery ignored", job.id, job.status)
        return job.status

    raw_request = message.request if job is None else job.request
    try:
        request = parse_request({**raw_request, "kind": kind} if isinstance(raw_request, dict) else raw_request)
        planned = route(request, runtime.catalogue)
    except InvalidRequest as exc:
        store.reject(message.job_id, kind, str(exc), raw_request if isinstance(raw_request, dict) else None)
        log.info("job %s rejected: %s", message.job_id, exc)
        return "rejected"

    if job is None:
        store.create_job(
            job_id=message.job_id,
            kind=kind,
            request=request.model_dump(mode="json", exclude_none=True),
            tier=planned.tier,
            queue=planned.queue,
        )
    # The recorded tier wins over a fresh routing: the job may have been moved to another tier's queue.
    tier = job.tier if job is not None and job.tier else planned.tier
    if tier != planned.tier:
        planned = route(request.model_copy(update={"tier": tier}), runtime.catalogue)
    queue = job.queue if job is not None and job.queue else planned.queue
    step = _Step(runtime, message.job_id, request, tier, queue, worker, reschedule)
    return step.run(planned.chain, message.cursor)


class _Step:
    def __init__(
        self,
        runtime: WorkerRuntime,
        job_id: str,
        request: Request,
        tier: str,
        queue: str,
        worker: str | None,
        reschedule: Reschedule,
    ):
        self.runtime, self.job_id, self.request = runtime, job_id, request
        self.tier, self.queue, self.worker, self.reschedule = tier, queue, worker, reschedule

    def run(self, chain: tuple[str, ...], cursor: Cursor) -> str:
        store, policy = self.runtime.store, self.runtime.policy
        last = len(chain) if self.request.fallback != "none" else 1
        errors: list[str] = []
        retry = cursor.retry
        for position in range(cursor.position, last):
            model_id = cursor.model if position == cursor.position and cursor.model else chain[position]
            provider = self.runtime.catalogue.model_spec(model_id).provider
            number = store.start_attempt(
                self.job_id, model=model_id, provider=provider, tier=self.tier, worker=self.worker
            )
            if number is None:
                return store.status(self.job_id) or "unknown"
            started = time.perf_counter()
            try:
                result = self._call(provider, model_id)
            except RouterError as exc:
                latency_ms = (time.perf_counter() - started) * 1000.0
                decision = policy.decide(exc, retry, model_id)
                http_status = getattr(exc, "http_status", None)
                if decision.action == "retry":
                    store.fail_attempt(
                        self.job_id,
                        number,
                        _describe(exc),
                        http_status=http_status,
                        delay_s=decision.delay_s,
                        latency_ms=latency_ms,
                    )
                    store.mark_retrying(self.job_id)
                    resume = Cursor(position=position, retry=retry + 1, model=decision.model or model_id)
                    self.reschedule(
                        self.job_id, self.queue, resume, decision.delay_s * self.runtime.settings.retry_delay_scale
                    )
                    log.info(
                        "job %s attempt %s on %s: %s; retry in %.1fs%s",
                        self.job_id,
                        number,
                        model_id,
                        exc,
                        decision.delay_s,
                        f" on {decision.model}" if decision.model else "",
                    )
                    return "retrying"
                store.fail_attempt(self.job_id, number, _describe(exc), http_status=http_status, latency_ms=latency_ms)
                errors.append(f"{model_id}: {_describe(exc)}")
                log.warning(
                    "job %s attempt %s on %s failed (%s): %s", self.job_id, number, model_id, decision.reason, exc
                )
                if decision.action == "fail":
                    break
                retry = 0
                continue
            except Exception as exc:  # a bug must end the job, not leave it running forever
                log.exception("job %s attempt %s on %s raised unexpectedly", self.job_id, number, model_id)
                store.fail_attempt(self.job_id, number, f"internal error: {type(exc).__name__}")
                errors.append(f"{model_id}: internal error: {type(exc).__name__}")
                break
            latency_ms = (time.perf_counter() - started) * 1000.0
            result = result.model_copy(update={"tier": self.tier})
            store.succeed(self.job_id, number, result=result, provider=provider, model_latency_ms=latency_ms)
            log.info(
                "job %s succeeded kind=%s tier=%s model=%s attempts=%s tokens=%s model_ms=%.0f",
                self.job_id,
                self.request.kind,
                self.tier,
                model_id,
                number,
                result.usage.total_tokens,
                latency_ms,
            )
            return "succeeded"
        store.fail(self.job_id, "; ".join(errors) or "no model left to try")
        log.warning("job %s failed: %s", self.job_id, "; ".join(errors))
        return "failed"

    def _call(self, provider: str, model_id: str) -> Result:
        backend = self.runtime.backend(provider)
        request = self.request
        if isinstance(request, GenerateRequest):
            return backend.generate(model_id, request, self.runtime.catalogue.defaults)
        if isinstance(request, EmbedRequest):
            return backend.embed(model_id, request)
        return backend.classify(model_id, request)
