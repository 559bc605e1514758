"""What happens to a job on a worker: validate, answer from the cache or run along its model chain,
fall back to the next tier, and record every step.

A failure goes through the retry policy: a retry is re-published with a countdown through ``reschedule``
(no worker slot sleeps), a spent or broken model hands over to the next one of the chain, a chain that
is spent escalates to the next tier (``fallback="tier"``), and a permanent refusal fails the job at once.
Models cooling down are passed over; a call over a rate limit defers the job until a slot frees.
``run_job`` never raises for a problem with the job itself; only infrastructure errors propagate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from broker.routing import Route, chain_for, lane_of, queue_for_tier, route
from tasks.cache import cache_key
from tasks.errors import InvalidRequest, RouterError
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
from tasks.store import Busy, JobView
from workers.messages import Cursor, JobMessage
from workers.retry import after_chain

if TYPE_CHECKING:
    from workers.cooldown import Cooldowns
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

Request = GenerateRequest | EmbedRequest | ClassifyRequest
Result = GenerateResult | EmbedResult | ClassifyResult
# (job id, queue, where to resume, seconds to wait): publishes the job again.
Reschedule = Callable[[str, str, Cursor, float], None]


def record_health(cooldowns: Cooldowns, model_id: str, *, ok: bool) -> bool:
    """Count a call towards the model's health. Best effort: once a call was made its outcome must be
    recorded whatever happens to the cooldown store, so a store failure here only costs the count."""
    try:
        return cooldowns.record(model_id, ok=ok)
    except RedisError as exc:
        log.warning("call to %s not counted: cooldown store unavailable (%s)", model_id, type(exc).__name__)
        return False


def busy_recheck_s(lease_remaining_s: float) -> float:
    """When a put-off duplicate looks again: just after the lease could run out, at least a second on."""
    return max(1.0, lease_remaining_s + 0.5)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_job(runtime: WorkerRuntime, kind: Kind, message: JobMessage, worker: str | None, reschedule: Reschedule) -> str:
    """Run one step of a job and return what became of it (a final status, ``retrying`` or ``deferred``)."""
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
        first = route(request, runtime.catalogue)
    except InvalidRequest as exc:
        store.reject(message.job_id, kind, str(exc), raw_request if isinstance(raw_request, dict) else None)
        log.info("job %s rejected: %s", message.job_id, exc)
        return "rejected"

    key = cache_key(request, first.tier)
    if job is None:
        store.create_job(
            job_id=message.job_id,
            kind=kind,
            request=request.model_dump(mode="json", exclude_none=True),
            tier=first.tier,
            queue=first.queue,
            cache_key=key,
        )
        job = store.get(message.job_id)
        assert job is not None
    fresh = message.cursor == Cursor() and job.tier == first.tier
    if fresh and request.use_cache and _answer_from_cache(runtime, job, key):
        return "succeeded"
    # The recorded tier wins: a tier fallback moved the job to another tier's queue.
    planned = chain_for(request, job.tier or first.tier, runtime.catalogue)
    step = _Step(runtime, job, request, planned, worker, reschedule)
    return step.run(message.cursor)


def _answer_from_cache(runtime: WorkerRuntime, job: JobView, key: str) -> bool:
    source = runtime.store.find_cached(key, runtime.settings.cache_ttl_s)
    if source is None or source.id == job.id:
        return False
    if runtime.store.succeed_from_cache(job.id, source):
        log.info("job %s answered from the cache (job %s)", job.id, source.id)
    return True


class _Step:
    def __init__(
        self,
        runtime: WorkerRuntime,
        job: JobView,
        request: Request,
        planned: Route,
        worker: str | None,
        reschedule: Reschedule,
    ):
        self.runtime, self.job_id, self.request = runtime, job.id, request
        # Retries and fallbacks stay in the job's lane: a bulk job never jumps the interactive queue.
        self.lane = lane_of(job.queue)
        self.tier, self.queue, self.chain = planned.tier, queue_for_tier(planned.tier, self.lane), planned.chain
        self.tier_hops = job.tier_hops
        self.lease = runtime.lease
        self.worker, self.reschedule = worker, reschedule
        self.scale = runtime.settings.retry_delay_scale

    def run(self, cursor: Cursor) -> str:
        store, policy, cooldowns = self.runtime.store, self.runtime.policy, self.runtime.cooldowns
        last = len(self.chain) if self.request.fallback != "none" else 1
        errors: list[str] = []
        cooling: list[float] = []
        retry = cursor.retry
        for position in range(cursor.position, last):
            resumed = position == cursor.position
            model_id = cursor.model if resumed and cursor.model else self.chain[position]
            provider = self.runtime.catalogue.model_spec(model_id).provider
            # A retry of this job is the model's probe; fresh arrivals pass over a model that is cooling down.
            if not (resumed and cursor.retry > 0):
                remaining = cooldowns.remaining_s(model_id)
                if remaining > 0:
                    store.skip_attempt(
                        self.job_id,
                        model=model_id,
                        provider=provider,
                        tier=self.tier,
                        worker=self.worker,
                        reason=f"cooling down for another {remaining:.1f}s",
                    )
                    errors.append(f"{model_id}: cooling down")
                    cooling.append(remaining)
                    retry = 0
                    continue
            wait_s = self.runtime.limiter.acquire(self.runtime.limit_rules(self.tier, provider, model_id))
            if wait_s > 0:
                self._put_off(Cursor(position, retry, model_id), wait_s)
                log.info("job %s deferred %.1fs: rate limit of tier %s / %s", self.job_id, wait_s, self.tier, provider)
                return "deferred"
            number = store.start_attempt(
                self.job_id, model=model_id, provider=provider, tier=self.tier, worker=self.worker, lease=self.lease
            )
            if number is None:
                return store.status(self.job_id) or "unknown"
            if isinstance(number, Busy):
                # A duplicate message (a resume, a requeue) of a job a live worker runs: look again once its
                # lease could have run out. The job ends once; this message then finds it final.
                delay = busy_recheck_s(number.remaining_s)
                self.reschedule(self.job_id, self.queue, cursor, delay)
                log.info("job %s is running on %s; its message is put off %.1fs", self.job_id, number.owner, delay)
                return "deferred"
            started = time.perf_counter()
            try:
                result = self._call(provider, model_id)
            except RouterError as exc:
                latency_ms = (time.perf_counter() - started) * 1000.0
                self._note_failure(model_id, exc)
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
                    store.mark_retrying(self.job_id, decision.delay_s * self.scale)
                    resume = Cursor(position=position, retry=retry + 1, model=decision.model or model_id)
                    self.reschedule(self.job_id, self.queue, resume, decision.delay_s * self.scale)
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
                    return self._fail(errors)
                retry = 0
                continue
            except Exception as exc:  # a bug must end the job, not leave it running forever
                log.exception("job %s attempt %s on %s raised unexpectedly", self.job_id, number, model_id)
                store.fail_attempt(self.job_id, number, f"internal error: {type(exc).__name__}")
                errors.append(f"{model_id}: internal error: {type(exc).__name__}")
                return self._fail(errors)
            latency_ms = (time.perf_counter() - started) * 1000.0
            record_health(cooldowns, model_id, ok=True)
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
        return self._chain_spent(errors, cooling)

    def _put_off(self, resume: Cursor, delay_s: float) -> None:
        """Publish the job again after ``delay_s``, noting when it is due so it is never taken for lost."""
        self.runtime.store.set_due([self.job_id], delay_s)
        self.reschedule(self.job_id, self.queue, resume, delay_s)

    def _note_failure(self, model_id: str, exc: RouterError) -> None:
        policy, cooldowns = self.runtime.policy, self.runtime.cooldowns
        seconds = policy.cooldown_s_for(exc)
        if seconds is None and policy.counts_against_model(exc) and record_health(cooldowns, model_id, ok=False):
            seconds = policy.cooldown_s
        if seconds:
            try:
                cooldowns.cool(model_id, seconds * self.scale)
            except RedisError as failure:
                log.warning("model %s not cooled down: cooldown store unavailable (%s)", model_id, failure)
                return
            log.warning("model %s cooled down for %.1fs after %s", model_id, seconds, type(exc).__name__)

    def _chain_spent(self, errors: list[str], cooling: list[float]) -> str:
        catalogue, settings = self.runtime.catalogue, self.runtime.settings
        end = after_chain(
            fallback=self.request.fallback,
            next_tier=catalogue.next_tier(self.tier, self.request.kind),
            tier_hops=self.tier_hops,
            max_tier_hops=settings.max_tier_hops,
            cooling_s=cooling,
            tried=len(errors),
        )
        if end.action == "escalate" and end.tier is not None:
            queue = queue_for_tier(end.tier, self.lane)
            if self.runtime.store.escalate(self.job_id, end.tier, queue):
                self.reschedule(self.job_id, queue, Cursor(), 0.0)
                log.info("job %s falls back from tier %s to %s", self.job_id, self.tier, end.tier)
                return "retrying"
            return self.runtime.store.status(self.job_id) or "unknown"  # it ended meanwhile: nothing to move
        if end.action == "wait":
            self._put_off(Cursor(), end.delay_s)
            log.info("job %s waits %.1fs for a model to come back from its cooldown", self.job_id, end.delay_s)
            return "deferred"
        return self._fail(errors)

    def _fail(self, errors: list[str]) -> str:
        self.runtime.store.fail(self.job_id, "; ".join(errors) or "no model left to try")
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
