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
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from kombu.exceptions import OperationalError as BrokerUnavailable
from redis.exceptions import RedisError

from llm_router.broker import tracing
from llm_router.broker.counters import count_deferral
from llm_router.broker.planning import plan
from llm_router.broker.routing import Route, chain_now, lane_of, queue_for_tier
from llm_router.tasks.errors import ConfigurationError, InvalidRequest, RouterError
from llm_router.tasks.records import WAITING_STATUSES, Outcome
from llm_router.tasks.schemas import (
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    Kind,
    parse_request,
)
from llm_router.tasks.store import (
    DATABASE_UNAVAILABLE,
    AttemptFailure,
    AttemptSpec,
    JobStore,
    JobView,
    Success,
)
from llm_router.workers.cancellation import STOP_REQUESTED
from llm_router.workers.job_end import Ended, after_final
from llm_router.workers.messages import Cursor, JobMessage
from llm_router.workers.retry import Action, after_chain
from llm_router.workers.streaming import DELTAS

if TYPE_CHECKING:
    from llm_router.workers.cooldown import Cooldowns
    from llm_router.workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

Request = GenerateRequest | EmbedRequest | ClassifyRequest
Result = GenerateResult | EmbedResult | ClassifyResult
# (job id, queue, where to resume, seconds to wait): publishes the job again.
Reschedule = Callable[[str, str, Cursor, float, int | None], None]  # job, queue, cursor, delay, priority
# What a worker waits out rather than blames on a job: the database, the shared Redis or the broker down. The
# message is handed back with a countdown; anything else that stops a job's outcome being recorded ends it.
INFRASTRUCTURE = (*DATABASE_UNAVAILABLE, RedisError, BrokerUnavailable)


def record_health(cooldowns: Cooldowns, model_id: str, *, ok: bool) -> bool:
    """Count a call towards the model's health. Best effort: once a call was made its outcome must be
    recorded whatever happens to the cooldown store, so a store failure here only costs the count."""
    try:
        return cooldowns.record(model_id, ok=ok)
    except RedisError as exc:
        log.warning("call to %s not counted: cooldown store unavailable (%s)", model_id, type(exc).__name__)
        return False


def cause_of(exc: Exception) -> str:
    """An error in words that can be stored: its type (the driver's own, for a database error) and the first
    line of its message, never the rest (a database's error may quote the data it refused)."""
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0][:200]
    return f"{type(cause).__name__}: {first}"


def unrecordable(exc: Exception) -> str:
    """Why a job's outcome could not be written."""
    return f"its outcome could not be recorded ({cause_of(exc)})"


def end_unrecorded(store: JobStore, job_id: str, exc: Exception) -> Outcome:
    """End a job whose outcome the database refused: ``failed``, with the cause, every attempt closed."""
    cause = unrecordable(exc)
    log.error("job %s failed: %s", job_id, cause, exc_info=exc)
    store.fail([job_id], cause)
    return Outcome.FAILED


def record_successes(cooldowns: Cooldowns, model_ids: list[str]) -> None:
    """Count calls that answered towards their models' health, at once; best effort, as ``record_health``."""
    try:
        cooldowns.record_successes(model_ids)
    except RedisError as exc:
        log.warning("%d calls not counted: cooldown store unavailable (%s)", len(model_ids), type(exc).__name__)


def success_of(
    runtime: WorkerRuntime, job_id: str, number: int, spec: AttemptSpec, result: Result, latency_ms: float
) -> Success:
    """A model's answer to attempt ``number`` (its call counted towards the model's health by the caller). A run
    its caller cancelled meanwhile ends cancelled, with what it made and the tokens it used."""
    result = result.model_copy(update={"tier": spec.tier})
    return Success(job_id, number, result, spec.provider, latency_ms, runtime.cancels.requested(job_id))


def log_success(success: Success, kind: str, spec: AttemptSpec) -> None:
    """A job's one line at INFO: what became of it, where, in how long."""
    result = success.result
    log.info(
        "job %s %s kind=%s tier=%s model=%s attempts=%s tokens=%s model_ms=%.0f",
        success.job_id,
        success.job_status,
        kind,
        spec.tier,
        spec.model,
        success.number,
        result.usage.total_tokens,
        success.model_latency_ms,
    )


def busy_recheck_s(lease_remaining_s: float) -> float:
    """When a put-off duplicate looks again: just after the lease could run out, at least a second on."""
    return max(1.0, lease_remaining_s + 0.5)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_job(
    runtime: WorkerRuntime, kind: Kind, message: JobMessage, worker: str | None, reschedule: Reschedule
) -> Outcome:
    """Run a job's message and return what became of it (a final status, ``retrying``, ``deferred``, or
    ``running`` for a duplicate of a job this process runs now)."""
    if not runtime.running.claim([message.job_id]):
        return _ignore_duplicate(message)
    try:
        return _run_claimed(runtime, kind, message, worker, reschedule)
    finally:
        runtime.running.release([message.job_id])


def _ignore_duplicate(message: JobMessage) -> Outcome:
    """A message of a job that another thread of this process runs now. Dropping it loses nothing: that run
    ends the job or publishes its next step, and if this process dies its own message is delivered again."""
    log.info("job %s is running in this process; a duplicate message is ignored", message.job_id)
    return Outcome.RUNNING


def _run_claimed(
    runtime: WorkerRuntime, kind: Kind, message: JobMessage, worker: str | None, reschedule: Reschedule
) -> Outcome:
    fresh_message = message.cursor == Cursor()
    job, cached = runtime.store.get_with_cached(message.job_id, runtime.settings.cache_ttl_s if fresh_message else None)
    outcome = _run_loaded(runtime, kind, message, job, cached, worker, reschedule)
    return _ended(runtime, message.job_id, job, outcome)


def _ended(runtime: WorkerRuntime, job_id: str, job: JobView | None, outcome: Outcome) -> Outcome:
    """Set off what follows a job's end when ``outcome`` is final."""
    final = outcome.final_status
    if final is None:
        return outcome
    if job is None:  # a message of a job never recorded, rejected: its callers only need waking
        after_final(runtime.end_hooks, [Ended(job_id, final)])
    else:
        after_final(
            runtime.end_hooks, [Ended.of(job.id, final, job.request or {}, queue=job.queue, run_step=job.run_step)]
        )
    return outcome


def go_on_after_failure(
    runtime: WorkerRuntime,
    job: JobView,
    request: Request,
    route: Route,
    worker: str | None,
    reschedule: Reschedule,
    failed: tuple[int, Exception, float],
) -> Outcome:
    """A job whose attempt on its chain's first model was made elsewhere (the event loop) and failed: ``failed``
    is the attempt's number, what it raised and its latency in ms. The policy's decision is carried out as on
    this path (a retry published, the chain's next models tried here, the job failed), and what follows the
    job's end is set off."""
    number, failure, latency_ms = failed
    run = _ChainRun(runtime, job, request, route, worker, reschedule)
    first = route.chain[0]
    outcome = run.record_call(_Place(0, 0, first), number, run.provider_of(first), failure, latency_ms)
    if outcome is None:
        outcome = run.run(Cursor(position=1))
    return _ended(runtime, job.id, job, outcome)


def _run_loaded(
    runtime: WorkerRuntime,
    kind: Kind,
    message: JobMessage,
    job: JobView | None,
    cached: JobView | None,
    worker: str | None,
    reschedule: Reschedule,
) -> Outcome:
    store = runtime.store
    fresh_message = message.cursor == Cursor()
    if job is None and message.request is None:
        store.reject(
            message.job_id, kind, f"job_id: no job {message.job_id} is recorded and the message has no request"
        )
        return Outcome.REJECTED
    if job is not None and job.is_final:
        log.info("job %s is already %s; redelivery ignored", job.id, job.status)
        return Outcome.of(job.status)

    raw_request = message.request if job is None else job.request
    try:
        request = parse_request({**raw_request, "kind": kind} if isinstance(raw_request, dict) else raw_request)
        # A message that carries its request (sent by a client that records nothing) is planned here, where it is
        # first recorded; a recorded job was planned at submission and is never routed again.
        planned = plan(request, runtime.catalogue) if job is None else None
    except InvalidRequest as exc:
        store.reject(message.job_id, kind, str(exc), raw_request if isinstance(raw_request, dict) else None)
        log.info("job %s rejected: %s", message.job_id, exc)
        return Outcome.REJECTED

    if (
        job is not None
        and job.status in WAITING_STATUSES
        and request.deadline_s is not None
        and store.expire(job.id, request.deadline_s)  # judged on the database's clock
    ):
        log.info("job %s expired: not started within %s s", job.id, request.deadline_s)
        return Outcome.EXPIRED
    recorded_before = job is not None
    if planned is not None:
        store.submit([planned.new_job(message.job_id)])
        job = store.get(message.job_id)
        assert job is not None
    assert job is not None
    moved = job.tier_hops > 0
    if fresh_message and not moved and request.use_cache and job.cache_key is not None:
        # The first read looked up the job's own key already when the job was recorded then.
        source = cached if recorded_before else store.find_cached(job.cache_key, runtime.settings.cache_ttl_s)
        if _answer_from_cache(runtime, job, source):
            return Outcome.SUCCEEDED
    try:
        # The row's tier wins (a tier fallback moved the job to another tier's queue); its chain is the
        # catalogue's now, so a catalogue changed while the job waited applies to the models it tries.
        chain = chain_now(request, job.tier or runtime.catalogue.default_tier, runtime.catalogue, moved=moved)
    except ConfigurationError as exc:
        log.error("job %s failed: %s", job.id, exc)
        store.fail([job.id], str(exc))
        return Outcome.FAILED
    return _ChainRun(runtime, job, request, chain, worker, reschedule).run(message.cursor)


def _answer_from_cache(runtime: WorkerRuntime, job: JobView, source: JobView | None) -> bool:
    if source is None or source.id == job.id:
        return False
    if runtime.store.answer_from_cache(job.id, source):
        log.info("job %s answered from the cache (job %s)", job.id, source.id)
    return True


@dataclass(frozen=True)
class _Place:
    """The model being tried, its position in the chain and its retries so far."""

    position: int
    retry: int
    model: str

    def cursor(self) -> Cursor:
        return Cursor(self.position, self.retry, self.model)


class _ChainRun:
    """One message's run of a job along its tier's chain, from the message's cursor: each model is passed
    over (cooling down), or tried under the rate limits, until one answers or a decision ends the run."""

    def __init__(
        self,
        runtime: WorkerRuntime,
        job: JobView,
        request: Request,
        planned: Route,
        worker: str | None,
        reschedule: Reschedule,
    ):
        self.runtime, self.store, self.job_id, self.request = runtime, runtime.store, job.id, request
        self.created_at = job.created_at
        # Retries and fallbacks stay in the job's lane: a bulk job never jumps the interactive queue.
        self.lane = lane_of(job.queue)
        self.tier, self.queue, self.chain = planned.tier, queue_for_tier(planned.tier, self.lane), planned.chain
        self.tier_hops = job.tier_hops
        self.worker, self.reschedule = worker, reschedule
        self.scale = runtime.settings.retry_delay_scale
        self.errors: list[str] = []  # one per model that failed or was passed over, for the job's error
        self.cooling: list[float] = []  # seconds left of each model passed over

    def run(self, cursor: Cursor) -> Outcome:
        last = len(self.chain) if self.request.fallback != "none" else 1
        retry = cursor.retry
        for position in range(cursor.position, last):
            resumed = position == cursor.position
            at = _Place(position, retry, cursor.model if resumed and cursor.model else self.chain[position])
            # A retry of this job is the model's probe; fresh arrivals pass over a model that is cooling down.
            probing = resumed and cursor.retry > 0
            if probing or not self._passed_over(at.model):
                outcome = self._attempt(at, cursor)
                if outcome is not None:
                    return outcome
            retry = 0
        return self._chain_spent()

    def _passed_over(self, model_id: str) -> bool:
        remaining = self.runtime.cooldowns.remaining_s(model_id)
        if remaining <= 0:
            return False
        spec = AttemptSpec(model_id, self.provider_of(model_id), self.tier, self.worker)
        self.store.skip(self.job_id, spec, f"cooling down for another {remaining:.1f}s")
        self.errors.append(f"{model_id}: cooling down")
        self.cooling.append(remaining)
        return True

    def _attempt(self, at: _Place, message_cursor: Cursor) -> Outcome | None:
        """Try ``at.model`` once; the run's outcome, or None to go on to the next model."""
        model_id, provider = at.model, self.provider_of(at.model)
        wait_s = self.runtime.limiter.acquire(self.runtime.limit_rules(self.tier, provider, model_id))
        if wait_s > 0:
            self._put_off(at.cursor(), wait_s)
            log.info("job %s deferred %.1fs: rate limit of tier %s / %s", self.job_id, wait_s, self.tier, provider)
            return Outcome.DEFERRED
        spec = AttemptSpec(model_id, provider, self.tier, self.worker)
        starts = self.store.start([self.job_id], spec, self.runtime.lease)
        busy = starts.busy.get(self.job_id)
        if busy is not None:
            # A duplicate message (a resume, a requeue) of a job a live worker runs: look again once its
            # lease could have run out. The job ends once; this message then finds it final.
            delay = busy_recheck_s(busy.remaining_s)
            self.reschedule(self.job_id, self.queue, message_cursor, delay, self.request.priority)
            log.info("job %s is running on %s; its message is put off %.1fs", self.job_id, busy.owner, delay)
            return Outcome.DEFERRED
        if not starts.started:
            return self._ended_meanwhile()
        number = starts.started[0].number
        attributes = {"llm_router.job_id": self.job_id, "llm_router.model": model_id, "llm_router.attempt": number}
        with tracing.span("llm_router.attempt", {**attributes, "llm_router.provider": provider}) as current:
            outcome = self._call_and_record(at, number, model_id, provider)
            tracing.note(current, **{"llm_router.outcome": str(outcome) if outcome is not None else "next model"})
            return outcome

    def _call_and_record(self, at: _Place, number: int, model_id: str, provider: str) -> Outcome | None:
        started = time.perf_counter()
        try:
            called: Result | Exception = self._call(provider, model_id)
        except Exception as exc:  # sorted out by record_call: a bug must end the job, not leave it running
            called = exc
        return self.record_call(at, number, provider, called, (time.perf_counter() - started) * 1000.0)

    def record_call(
        self, at: _Place, number: int, provider: str, called: Result | Exception, latency_ms: float
    ) -> Outcome | None:
        """Record what attempt ``number`` on ``at`` gave: its result, a failure the policy decides on, or an
        unexpected exception (a bug, the job failed); None: on to the next model."""
        if isinstance(called, RouterError):
            return self._recording(partial(self._failed, at, number, called, latency_ms))
        if isinstance(called, Exception):
            log.error("job %s attempt %s on %s raised unexpectedly", self.job_id, number, at.model, exc_info=called)
            self.errors.append(f"{at.model}: internal error: {type(called).__name__}")
            return self._recording(partial(self._internal_error, number, called))
        return self._recording(partial(self._succeeded, number, at.model, provider, called, latency_ms))

    def _recording(self, record: Callable[[], Outcome | None]) -> Outcome | None:
        """Record an attempt's outcome; one the database refuses ends the job ``failed`` with the cause, never
        running (an outage is waited out: the message comes back later)."""
        try:
            return record()
        except INFRASTRUCTURE:
            raise
        except Exception as exc:
            return end_unrecorded(self.store, self.job_id, exc)

    def _internal_error(self, number: int, exc: Exception) -> Outcome:
        self.store.fail_attempts([AttemptFailure(self.job_id, number, f"internal error: {type(exc).__name__}")])
        return self._fail()

    def _failed(self, at: _Place, number: int, exc: RouterError, latency_ms: float) -> Outcome | None:
        """Record a failed attempt and carry out the policy's decision; None: on to the next model."""
        self._note_failure(at.model, exc)
        decision = self.runtime.policy.decide(exc, at.retry, at.model)
        retrying = decision.action is Action.RETRY
        failure = AttemptFailure(
            self.job_id,
            number,
            _describe(exc),
            http_status=getattr(exc, "http_status", None),
            delay_s=decision.delay_s if retrying else None,
            latency_ms=latency_ms,
        )
        self.store.fail_attempts([failure])
        if retrying:
            delay_s = decision.delay_s * self.scale
            self.store.retry([self.job_id], delay_s)
            resume = Cursor(position=at.position, retry=at.retry + 1, model=decision.model or at.model)
            self.reschedule(self.job_id, self.queue, resume, delay_s, self.request.priority)
            on = f" on {decision.model}" if decision.model else ""
            log.info("job %s attempt %s on %s: %s; retry in %.1fs%s", self.job_id, number, at.model, exc, delay_s, on)
            return Outcome.RETRYING
        self.errors.append(f"{at.model}: {_describe(exc)}")
        log.warning("job %s attempt %s on %s failed (%s): %s", self.job_id, number, at.model, decision.reason, exc)
        return self._fail() if decision.action is Action.FAIL else None

    def _succeeded(self, number: int, model_id: str, provider: str, result: Result, latency_ms: float) -> Outcome:
        spec = AttemptSpec(model_id, provider, self.tier, self.worker)
        record_health(self.runtime.cooldowns, model_id, ok=True)
        success = success_of(self.runtime, self.job_id, number, spec, result, latency_ms)
        with tracing.span("llm_router.record", {"llm_router.status": str(success.job_status)}):
            self.store.succeed([success])
        log_success(success, self.request.kind, spec)
        return Outcome.of(success.job_status)

    def provider_of(self, model_id: str) -> str:
        return self.runtime.catalogue.model_spec(model_id).provider

    def _put_off(self, resume: Cursor, delay_s: float) -> None:
        """Publish the job again after ``delay_s``, noting when it is due so it is never taken for lost."""
        self.runtime.store.defer([self.job_id], delay_s)
        self.reschedule(self.job_id, self.queue, resume, delay_s, self.request.priority)
        if self.runtime.notices is not None:
            count_deferral(self.runtime.notices.client, self.tier)

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

    def _chain_spent(self) -> Outcome:
        catalogue, settings = self.runtime.catalogue, self.runtime.settings
        decision = after_chain(
            fallback=self.request.fallback,
            next_tier=catalogue.next_tier(self.tier, self.request.kind),
            tier_hops=self.tier_hops,
            max_tier_hops=settings.max_tier_hops,
            cooling_s=self.cooling,
            tried=len(self.errors),
        )
        if decision.action is Action.NEXT_TIER and decision.tier is not None:
            queue = queue_for_tier(decision.tier, self.lane)
            if not self.store.escalate(self.job_id, decision.tier, queue):
                return self._ended_meanwhile()  # nothing to move
            self.reschedule(self.job_id, queue, Cursor(), 0.0, self.request.priority)
            log.info("job %s falls back from tier %s to %s", self.job_id, self.tier, decision.tier)
            return Outcome.RETRYING
        if decision.action is Action.WAIT:
            self._put_off(Cursor(), decision.delay_s)
            log.info("job %s waits %.1fs for a model to come back from its cooldown", self.job_id, decision.delay_s)
            return Outcome.DEFERRED
        return self._fail()

    def _ended_meanwhile(self) -> Outcome:
        """The status of a job that another message ended while this one ran (its row is never removed)."""
        status = self.store.status(self.job_id)
        return Outcome.FAILED if status is None else Outcome.of(status)

    def _fail(self) -> Outcome:
        self.store.fail([self.job_id], "; ".join(self.errors) or "no model left to try")
        log.warning("job %s failed: %s", self.job_id, "; ".join(self.errors))
        return Outcome.FAILED

    def _call(self, provider: str, model_id: str) -> Result:
        backend = self.runtime.backend(provider)
        request = self.request
        if isinstance(request, GenerateRequest):
            cancels, streams, job_id = self.runtime.cancels, self.runtime.streams, self.job_id
            stop = STOP_REQUESTED.set(lambda: cancels.requested(job_id))  # checked between tokens
            deltas = DELTAS.set(streams.sink(job_id) if request.stream and streams is not None else None)
            try:
                return backend.generate(model_id, request, self.runtime.catalogue.defaults)
            finally:
                DELTAS.reset(deltas)
                STOP_REQUESTED.reset(stop)
        if isinstance(request, EmbedRequest):
            return backend.embed(model_id, request)
        return backend.classify(model_id, request)
