"""What happens to a job on a worker: validate, run along its model chain, record every step.

``run_job`` never raises for a problem with the job itself: bad input ends ``rejected``, model failures
end ``failed`` with every attempt recorded, and only infrastructure errors (the database is gone)
propagate to Celery so that the message is not acknowledged as done.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from broker.routing import route
from tasks.errors import InvalidRequest, PermanentError, RouterError, TransientError
from tasks.messages import JobMessage
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


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_job(runtime: WorkerRuntime, kind: Kind, message: JobMessage, worker: str | None) -> str:
    """Run one job to a final state and return that state."""
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
        request = parse_request({**(raw_request or {}), "kind": kind} if isinstance(raw_request, dict) else raw_request)
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
    chain = planned.chain
    return _run_chain(runtime, message.job_id, request, tier, chain, worker)


def _run_chain(
    runtime: WorkerRuntime,
    job_id: str,
    request: GenerateRequest | EmbedRequest | ClassifyRequest,
    tier: str,
    chain: tuple[str, ...],
    worker: str | None,
) -> str:
    store = runtime.store
    errors: list[str] = []
    models = chain if request.fallback != "none" else chain[:1]
    for model_id in models:
        provider = runtime.catalogue.model_spec(model_id).provider
        number = store.start_attempt(job_id, model=model_id, provider=provider, tier=tier, worker=worker)
        if number is None:
            return store.status(job_id) or "unknown"
        started = time.perf_counter()
        result: GenerateResult | EmbedResult | ClassifyResult
        try:
            backend = runtime.backend(provider)
            if isinstance(request, GenerateRequest):
                result = backend.generate(model_id, request, runtime.catalogue.defaults)
            elif isinstance(request, EmbedRequest):
                result = backend.embed(model_id, request)
            else:
                result = backend.classify(model_id, request)
        except (PermanentError, TransientError) as exc:
            store.fail_attempt(job_id, number, _describe(exc))
            errors.append(f"{model_id}: {_describe(exc)}")
            log.warning("job %s attempt %s on %s failed: %s", job_id, number, model_id, exc)
            continue
        except RouterError as exc:
            store.fail_attempt(job_id, number, _describe(exc))
            errors.append(f"{model_id}: {_describe(exc)}")
            break
        latency_ms = (time.perf_counter() - started) * 1000.0
        result = result.model_copy(update={"tier": tier})
        store.succeed(job_id, number, result=result, provider=provider, model_latency_ms=latency_ms)
        log.info(
            "job %s succeeded kind=%s tier=%s model=%s tokens=%s model_ms=%.0f",
            job_id,
            request.kind,
            tier,
            model_id,
            result.usage.total_tokens,
            latency_ms,
        )
        return "succeeded"
    store.fail(job_id, "all models failed: " + " | ".join(errors))
    log.warning("job %s failed after %d model(s)", job_id, len(errors))
    return "failed"
