"""Running several jobs of one kind together: the jobs of a bulk message, or interactive jobs that were
waiting at the same time (dynamic batching).

Jobs that can share a model call (same tier, same first model, a backend that runs many requests at once,
no cooldown or rate limit in the way, no cached answer) start in one transaction, go through the model in
one call and are recorded in one transaction; each still gets its own attempt, result and usage row.
Every other job, and every job of a group whose shared call failed, takes the one-job path of
``llm_router.workers.execution``, with its retries, fallbacks and cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from llm_router.broker import tracing
from llm_router.broker.routing import chain_now, queue_for_tier
from llm_router.tasks.errors import ConfigurationError, InvalidRequest
from llm_router.tasks.records import JobStatus, Outcome
from llm_router.tasks.schemas import GenerateRequest, Kind, parse_request
from llm_router.tasks.store import AttemptFailure, AttemptSpec, Started, Success
from llm_router.workers.backends.base import ManyCall, many_call
from llm_router.workers.cancellation import ROW_STOPS
from llm_router.workers.execution import (
    INFRASTRUCTURE,
    Request,
    Reschedule,
    end_unrecorded,
    record_health,
    run_job,
    unrecordable,
)
from llm_router.workers.job_end import after_final, ended_request
from llm_router.workers.messages import Cursor, JobMessage
from llm_router.workers.streaming import ROW_DELTAS

if TYPE_CHECKING:
    from llm_router.broker.catalogue import GenerationDefaults
    from llm_router.broker.routing import Lane
    from llm_router.workers.runtime import WorkerProfile, WorkerRuntime

log = logging.getLogger(__name__)


# Generations share a call only in small groups: a batch runs as long as its longest answer.
MAX_GENERATIONS_TOGETHER = 8


def inputs_per_call(profile: WorkerProfile, kind: Kind, lane: Lane) -> int:
    """How many inputs a call that starts from a message of ``kind`` on ``lane`` takes together."""
    if kind == "generate":
        return min(profile.max_batch, MAX_GENERATIONS_TOGETHER)
    if lane == "bulk" and profile.runs_models:
        return max(profile.max_batch, profile.bulk_window)
    return profile.max_batch


SHARED_GENERATION_PARAMETERS = {"max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop"}


@dataclass
class _Group:
    tier: str
    model_id: str
    provider: str
    members: list[tuple[JobMessage, Request]] = field(default_factory=list)


def _parameters(request: Request, defaults: GenerationDefaults) -> str | None:
    """What must be equal for generations to share a call; None when this one must run alone. A greedy
    (temperature 0) or seeded generation promises the same text whatever else the worker does, and a
    left-padded batch changes the arithmetic (padding, reduced-precision sums), so it runs on its own."""
    if not isinstance(request, GenerateRequest):
        return ""
    temperature = defaults.temperature if request.temperature is None else request.temperature
    if temperature == 0 or request.seed is not None:
        return None
    return request.model_dump_json(include=SHARED_GENERATION_PARAMETERS)


def run_jobs(
    runtime: WorkerRuntime, kind: Kind, messages: list[JobMessage], worker: str | None, reschedule: Reschedule
) -> list[Outcome]:
    """Run every job of ``messages``; returns what became of each (as ``run_job`` does)."""
    if len(messages) == 1:
        return [run_job(runtime, kind, messages[0], worker, reschedule)]
    groups, alone = _plan(runtime, kind, messages)
    outcomes: list[Outcome] = []
    for group in groups:
        outcomes += _run_group(runtime, kind, group, worker, reschedule)
    for message in alone:
        outcomes.append(run_job(runtime, kind, message, worker, reschedule))
    return outcomes


def _many_call(runtime: WorkerRuntime, kind: Kind, provider: str) -> ManyCall | None:
    return many_call(runtime.backend(provider), kind, runtime.catalogue.defaults)


def _plan(runtime: WorkerRuntime, kind: Kind, messages: list[JobMessage]) -> tuple[list[_Group], list[JobMessage]]:
    catalogue = runtime.catalogue
    alone = [m for m in messages if m.request is not None or m.cursor != Cursor()]
    fresh = [m for m in messages if m.request is None and m.cursor == Cursor()]
    views = runtime.store.statuses([m.job_id for m in fresh])
    usable: dict[tuple[str, str, str], bool] = {}  # (tier, model, provider) → can share a call now
    candidates: list[tuple[JobMessage, Request, str, str, str, str]] = []
    for message in fresh:
        view = views.get(message.job_id)
        if (
            view is None
            or view.is_final
            or not isinstance(view.request, dict)
            or view.run_step is not None
            or "deadline_s" in view.request
            or view.tier_hops
        ):
            # The one-job path rejects, skips or runs it (a pipeline's step carries the pipeline on; a job
            # with a deadline may have to expire; one a tier fallback moved runs its new tier's chain).
            alone.append(message)
            continue
        try:
            request = parse_request({**view.request, "kind": kind})
            # A job whose tier or model the catalogue no longer has runs alone (and fails with the cause).
            planned = chain_now(request, view.tier or "", catalogue, moved=False)
        except (InvalidRequest, ConfigurationError):
            alone.append(message)
            continue
        model_id = planned.chain[0]
        provider: str = catalogue.model_spec(model_id).provider
        route_key = (planned.tier, model_id, provider)
        if route_key not in usable:
            usable[route_key] = (
                _many_call(runtime, kind, provider) is not None
                and not runtime.limit_rules(planned.tier, provider, model_id)
                and runtime.cooldowns.remaining_s(model_id) <= 0
            )
        key = view.cache_key
        if key is None or not usable[route_key] or _parameters(request, catalogue.defaults) is None:
            alone.append(message)
            continue
        candidates.append((message, request, planned.tier, model_id, provider, key))
    keys = [key for _, request, *_, key in candidates if request.use_cache]
    answered = runtime.store.cached_keys(keys, runtime.settings.cache_ttl_s)
    groups: dict[tuple[str, str, str, str | None], list[_Group]] = {}
    for message, request, tier, model_id, provider, key in candidates:
        if request.use_cache and key in answered:
            alone.append(message)  # the one-job path answers it from the cache
            continue
        chunks = groups.setdefault((tier, model_id, provider, _parameters(request, catalogue.defaults)), [])
        if not chunks or (kind == "generate" and len(chunks[-1].members) >= MAX_GENERATIONS_TOGETHER):
            chunks.append(_Group(tier, model_id, provider))
        chunks[-1].members.append((message, request))
    return [group for chunks in groups.values() for group in chunks], alone


@contextmanager
def _row_hooks(runtime: WorkerRuntime, jobs: list[tuple[str, Request]]) -> Iterator[None]:
    """Around a batched generation: each row's stop check (its caller may cancel it) and delta sink."""
    streams, cancels = runtime.streams, runtime.cancels
    sinks = [
        streams.sink(job_id) if streams is not None and getattr(request, "stream", False) else None
        for job_id, request in jobs
    ]
    stops: list[Callable[[], bool]] = [partial(cancels.requested, job_id) for job_id, _ in jobs]
    sink_token, stop_token = ROW_DELTAS.set(sinks), ROW_STOPS.set(stops)
    try:
        yield
    finally:
        ROW_DELTAS.reset(sink_token)
        ROW_STOPS.reset(stop_token)


def _run_group(
    runtime: WorkerRuntime, kind: Kind, group: _Group, worker: str | None, reschedule: Reschedule
) -> list[Outcome]:
    by_id = {message.job_id: (message, request) for message, request in group.members}
    mine = runtime.running.claim(list(by_id))
    try:
        return _run_claimed_group(runtime, kind, group, by_id, mine, worker, reschedule)
    finally:
        runtime.running.release(mine)


def _run_claimed_group(
    runtime: WorkerRuntime,
    kind: Kind,
    group: _Group,
    by_id: dict[str, tuple[JobMessage, Request]],
    mine: list[str],
    worker: str | None,
    reschedule: Reschedule,
) -> list[Outcome]:
    store = runtime.store
    spec = AttemptSpec(group.model_id, group.provider, group.tier, worker)
    started = store.start(mine, spec, runtime.lease).started
    # A job left out ended meanwhile or runs elsewhere (another process, another thread of this one): the
    # one-job path ignores or puts off its message.
    left_out = [job_id for job_id in by_id if job_id not in {job.job_id for job in started}]
    runtime.running.release([job_id for job_id in left_out if job_id in mine])  # never another thread's
    outcomes = [run_job(runtime, kind, by_id[job_id][0], worker, reschedule) for job_id in left_out]
    if not started:
        return outcomes
    began = time.perf_counter()
    attributes = {
        "llm_router.model": group.model_id,
        "llm_router.provider": group.provider,
        "llm_router.jobs": len(started),
    }
    try:
        call = _many_call(runtime, kind, group.provider)
        assert call is not None  # the group was planned for a backend that has one
        with (
            tracing.span("llm_router.attempt", attributes),
            _row_hooks(runtime, [(job.job_id, by_id[job.job_id][1]) for job in started]),
        ):
            results = call(group.model_id, [by_id[job.job_id][1] for job in started])
    except Exception as exc:  # one bad input must not sink the others: each job runs again on its own
        latency_ms = (time.perf_counter() - began) * 1000.0
        reason = f"the shared call failed ({type(exc).__name__}: {exc}); each job runs on its own"
        store.fail_attempts([AttemptFailure(job.job_id, job.number, reason, latency_ms=latency_ms) for job in started])
        log.warning("%d %s jobs on %s: %s", len(started), kind, group.model_id, reason)
        runtime.running.release([job.job_id for job in started])
        return outcomes + [run_job(runtime, kind, by_id[job.job_id][0], worker, reschedule) for job in started]
    latency_ms = (time.perf_counter() - began) * 1000.0
    record_health(runtime.cooldowns, group.model_id, ok=True)
    answers: list[tuple[Started, Any]] = [
        (job, result.model_copy(update={"tier": group.tier})) for job, result in zip(started, results, strict=True)
    ]
    cancelled = frozenset(job.job_id for job in started if runtime.cancels.requested(job.job_id))
    ended = _record_group(runtime, kind, group, answers, latency_ms, cancelled)
    queue = queue_for_tier(group.tier)
    after_final(
        runtime.end_hooks,
        [ended_request(job.job_id, ended[job.job_id], by_id[job.job_id][1], queue=queue) for job in started],
    )
    log.info(
        "%d jobs succeeded together kind=%s tier=%s model=%s inputs=%d model_ms=%.0f",
        len(started),
        kind,
        group.tier,
        group.model_id,
        sum(len(getattr(by_id[job.job_id][1], "input", None) or [None]) for job in started),
        latency_ms,
    )
    return outcomes + [Outcome.of(status) for status in ended.values()]


def _record_group(
    runtime: WorkerRuntime,
    kind: Kind,
    group: _Group,
    answers: list[tuple[Started, Any]],
    latency_ms: float,
    cancelled: frozenset[str],
) -> dict[str, JobStatus]:
    """Record the group's answers in one statement; what became of each job. When the database refuses the
    group's record (anything but an outage), each job is recorded on its own, and one whose own record is
    refused ends ``failed`` with the cause: no job of the group is left running."""
    store = runtime.store
    successes = [
        Success(job.job_id, job.number, result, group.provider, latency_ms, job.job_id in cancelled)
        for job, result in answers
    ]
    try:
        with tracing.span("llm_router.record", {"llm_router.jobs": len(successes)}):
            store.succeed(successes)
        return {success.job_id: success.job_status for success in successes}
    except INFRASTRUCTURE:
        raise
    except Exception as exc:
        log.warning(
            "%d %s jobs could not be recorded together (%s); each is recorded on its own",
            len(answers),
            kind,
            unrecordable(exc),
        )
    ended: dict[str, JobStatus] = {}
    for success in successes:
        try:
            store.succeed([success])
            ended[success.job_id] = success.job_status
        except INFRASTRUCTURE:
            raise
        except Exception as exc:
            end_unrecorded(store, success.job_id, exc)
            ended[success.job_id] = JobStatus.FAILED
    return ended
