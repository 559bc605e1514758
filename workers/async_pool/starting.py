"""Starting a take's fresh jobs on the event loop: read in one statement, planned into HTTP calls (the inputs of
embed and classify jobs packed into few), admitted by the rate limits, and started under the process's lease in
one statement per model. What the loop does not run itself goes to the threads' path."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_router.broker import tracing
from llm_router.tasks.store import AttemptSpec, JobView
from llm_router.workers.async_pool.lane import LoopRun, fresh_job, loop_run
from llm_router.workers.backends.base import PlansCalls
from llm_router.workers.backends.http import HttpCaller, PlannedCall
from llm_router.workers.draining import Drained

if TYPE_CHECKING:
    from llm_router.workers.runtime import WorkerRuntime


@dataclass
class Running:
    """A job the loop runs: its message, its row as read, its run and its attempt."""

    item: Drained
    job: JobView
    run: LoopRun
    spec: AttemptSpec
    number: int = 0  # the attempt's, once started


@dataclass(frozen=True)
class Call:
    """One HTTP call and the jobs it answers, in the order of its answer's results."""

    jobs: list[Running]
    planned: PlannedCall[list[Any]]
    caller: HttpCaller

    @property
    def cancellable(self) -> bool:
        """A generation's call of its own: its caller's cancel closes it."""
        return len(self.jobs) == 1 and self.jobs[0].item.kind == "generate"


def start_jobs(runtime: WorkerRuntime, hostname: str, items: list[Drained]) -> tuple[list[Call], list[Drained]]:
    """In the records thread: a take's fresh jobs read, planned into calls, admitted by the rate limits and
    started under this process's lease, in one statement per model; the other messages go to the threads'
    path."""
    fresh: dict[str, Drained] = {}
    elsewhere: list[Drained] = []
    for item in items:
        message = None if tracing.enabled() or item.kind == "webhook" else fresh_job(item)
        if message is None or message.job_id in fresh:
            elsewhere.append(item)
        else:
            fresh[message.job_id] = item
    claimed = set(runtime.running.claim(list(fresh)))
    elsewhere += [item for job_id, item in fresh.items() if job_id not in claimed]  # run here: ignored there
    looked = runtime.store.first_look(sorted(claimed), runtime.settings.cache_ttl_s) if claimed else {}
    cooling: dict[str, bool] = {}
    candidates: list[Running] = []
    for job_id in sorted(claimed):
        job, cached = looked.get(job_id, (None, None))
        run = loop_run(job, cached, fresh[job_id].kind, runtime.catalogue) if job is not None else None
        if job is not None and run is not None and not _cooling(runtime, run.model, cooling):
            spec = AttemptSpec(run.model, runtime.catalogue.model_spec(run.model).provider, run.route.tier, hostname)
            candidates.append(Running(fresh[job_id], job, run, spec))
    admitted = [call for call in plan_calls(runtime, candidates) if not _limited(runtime, call)]
    ready = [running for call in admitted for running in call.jobs]
    numbers = _started(runtime, ready)
    started: list[Call] = []
    for call in admitted:
        jobs = [running for running in call.jobs if running.job.id in numbers]
        for running in jobs:
            running.number = numbers[running.job.id]
        # A job not started ended, or another process runs it, meanwhile: the threads' path says which.
        started += [call] if len(jobs) == len(call.jobs) else plan_calls(runtime, jobs)
    on_loop = {running.job.id for call in started for running in call.jobs}
    elsewhere += [fresh[job_id] for job_id in claimed if job_id not in on_loop]
    runtime.running.release([job_id for job_id in claimed if job_id not in on_loop])
    return started, elsewhere


def _cooling(runtime: WorkerRuntime, model: str, cooling: dict[str, bool]) -> bool:
    """Whether the model cools down (the threads' path passes it over, with its record); asked once a take."""
    if model not in cooling:
        cooling[model] = runtime.cooldowns.remaining_s(model) > 0
    return cooling[model]


def plan_calls(runtime: WorkerRuntime, jobs: list[Running]) -> list[Call]:
    """The calls that answer ``jobs``: the backend packs the inputs of embed and classify jobs of one model
    into few calls, unless a rate limit counts calls on their route (then each is a call of its own, as on
    the threads' path). A job no call answers (a stream, a request of more inputs than a call takes) is left
    to the threads' path."""
    groups: dict[tuple[AttemptSpec, str, int], list[Running]] = defaultdict(list)
    for running in jobs:
        spec = running.spec
        alone = bool(runtime.limit_rules(running.run.route.tier, spec.provider, spec.model))
        groups[(spec, running.item.kind, id(running) if alone else 0)].append(running)
    calls: list[Call] = []
    for (spec, _, _), group in groups.items():
        backend = runtime.backend(spec.provider)
        if not isinstance(backend, PlansCalls):
            continue
        try:
            planned = backend.plan(spec.model, [running.run.request for running in group], runtime.catalogue.defaults)
        except Exception:  # a catalogue error (a missing base_url): the threads' path records it
            continue
        calls += [Call([group[p] for p in plan.positions], plan.call, backend.caller) for plan in planned]
    return calls


def _limited(runtime: WorkerRuntime, call: Call) -> bool:
    """Whether the call would go over a rate limit now (the threads' path then gives its job a turn); a call
    that fits takes its slot."""
    first = call.jobs[0]
    rules = runtime.limit_rules(first.run.route.tier, first.spec.provider, first.spec.model)
    return bool(rules) and not runtime.limiter.try_acquire(rules)


def _started(runtime: WorkerRuntime, jobs: list[Running]) -> dict[str, int]:
    """Start ``jobs`` under this process's lease, one statement per model; the attempt numbers of those taken."""
    by_spec: dict[AttemptSpec, list[str]] = defaultdict(list)
    for running in jobs:
        by_spec[running.spec].append(running.job.id)
    numbers: dict[str, int] = {}
    for spec, job_ids in by_spec.items():
        starts = runtime.store.start(job_ids, spec, runtime.lease)
        numbers.update({start.job_id: start.number for start in starts.started})
    return numbers
