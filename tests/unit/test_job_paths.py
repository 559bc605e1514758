"""A job's path through failures, without services: the store on SQLite, cooldowns and rate limits in memory,
a scripted backend in place of a model. Each message the worker re-publishes is delivered at once (its
countdown is recorded, not waited), as a broker would deliver it later."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import DataError

from llm_router.broker.catalogue import Catalogue, GenerationDefaults
from llm_router.broker.planning import plan
from llm_router.broker.queues import TASK_NAMES, queue_names
from llm_router.broker.settings import Settings
from llm_router.broker.transports import MemoryBroker, MemoryTransport, TaskMessage
from llm_router.tasks.errors import ModelLoading, ModelNotFound, RateLimited, ServerError, Unauthorised
from llm_router.tasks.records import AttemptStatus, Base, JobStatus, Outcome
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
from llm_router.tasks.store import AttemptSpec, JobStore, Lease, Success
from llm_router.tasks.store.lifecycle.guards import CANCELLED_BY_CALLER
from llm_router.workers.backends.context import BackendContext
from llm_router.workers.backends.echo import EchoBackend
from llm_router.workers.cooldown import LocalCooldowns
from llm_router.workers.draining import Drainer
from llm_router.workers.execution import run_job
from llm_router.workers.groups import run_jobs
from llm_router.workers.messages import Cursor, JobMessage, parse_messages
from llm_router.workers.rate_limits import WINDOW_MARGIN_S, RateLimiter
from llm_router.workers.registry import ModelRegistry
from llm_router.workers.retry import RetryPolicy
from llm_router.workers.runtime import WorkerProfile, WorkerRuntime

CATALOGUE = Catalogue.model_validate(
    {
        "tiers": {
            "fast": {"generate": ["m/a", "m/b"], "embed": ["e/a"]},
            "balanced": {"generate": ["m/c"], "embed": ["e/c"]},
            "quality": {"generate": ["m/d"], "requests_per_minute": 1},
        },
        "models": {name: {"provider": "echo"} for name in ("m/a", "m/a-small", "m/b", "m/c", "m/d", "e/a", "e/c")},
        "downgrades": {"m/a": "m/a-small"},
    }
)
Step = str | Exception  # "ok", or what the call raises
CONSUMED = queue_names(CATALOGUE.ordered_tiers)  # the queues the worker was started on (`--queues`)


class Scripted(EchoBackend):
    """Answers as the echo backend does, after raising what the script says for the model's next call."""

    def __init__(self, script: dict[str, list[Step]]):
        self.script = {model: list(steps) for model, steps in script.items()}
        self.calls: list[tuple[str, int]] = []  # (model, requests in the call)
        self.during_call: Callable[[], None] = lambda: None  # what happens elsewhere while a call runs

    def _next(self, model_id: str, requests: int = 1) -> None:
        self.calls.append((model_id, requests))
        self.during_call()
        steps = self.script.get(model_id) or ["ok"]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if isinstance(step, Exception):
            raise step

    def generate(self, model_id: str, request: GenerateRequest, defaults: GenerationDefaults) -> GenerateResult:
        self._next(model_id)
        return super().generate(model_id, request, defaults)

    def embed_many(self, model_id: str, requests: list[EmbedRequest]) -> list[EmbedResult]:
        self._next(model_id, len(requests))
        return super().embed_many(model_id, requests)

    def classify_many(self, model_id: str, requests: list[ClassifyRequest]) -> list[ClassifyResult]:
        self._next(model_id, len(requests))
        return super().classify_many(model_id, requests)


@dataclass
class Cluster:
    """One worker process on an in-memory broker, and what it re-published."""

    runtime: WorkerRuntime
    backend: Scripted
    broker: MemoryBroker = field(default_factory=MemoryBroker)
    republished: list[tuple[str, Cursor, float]] = field(default_factory=list)  # (queue, cursor, delay)
    priorities: list[int | None] = field(default_factory=list)  # of each message re-published
    kind: Kind = "generate"  # of the job being driven

    def reschedule(self, job_id: str, queue: str, cursor: Cursor, delay_s: float, priority: int | None) -> None:
        self.republished.append((queue, cursor, delay_s))
        self.priorities.append(priority)
        kwargs = {"job_id": job_id, "cursor": cursor.as_json()}
        self._publish(f"{job_id}:{cursor.position}.{cursor.retry}", [], kwargs, queue)

    def _publish(self, task_id: str, args: list[str], kwargs: dict[str, Any], queue: str) -> None:
        message = TaskMessage(TASK_NAMES[self.kind], task_id, args, kwargs, queue, 1, None)
        MemoryTransport(self.broker).publish(message)

    def submit(self, request: dict[str, Any], *, bulk: bool = False) -> str:
        """Record a job as the router does: planned once (tier, queue, cache key), queued."""
        job_id = str(uuid.uuid4())
        planned = plan(parse_request(request), self.runtime.catalogue)
        assert self.runtime.store.submit([planned.new_job(job_id, bulk=bulk)]) == {job_id}
        return job_id

    def drive(self, job_id: str, kind: Kind = "generate", most: int = 10) -> list[Outcome]:
        """Publish the job's message, then take and run every message on the broker (each one it re-publishes
        is delivered at once: its countdown is recorded, not waited, as a broker would deliver it later), each
        acknowledged once run; what became of each."""
        self.kind = kind
        view = self.runtime.store.get(job_id)
        self._publish(job_id, [job_id], {}, (view.queue if view is not None else None) or "fast")
        drainer = Drainer(lambda: MemoryTransport(self.broker))
        outcomes: list[Outcome] = []
        while len(outcomes) < most:
            take = drainer.take(CONSUMED, room=1, wait_ms=0)
            for item in take.drained:
                (message,) = parse_messages(item.args, item.kwargs)
                outcomes.append(run_job(self.runtime, kind, message, "worker-1", self.reschedule))
            take.ack()
            if not take.drained:
                break
        return outcomes

    def path(self, job_id: str) -> list[tuple[str | None, str]]:
        return [(attempt.model, attempt.status) for attempt in self.runtime.store.attempts(job_id)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield make_cluster(tmp_path, {})


def make_cluster(tmp_path: Path, script: dict[str, list[Step]]) -> Cluster:
    engine = create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    Base.metadata.create_all(engine)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}", max_tier_hops=2, cache_ttl_s=3600.0, retry_delay_scale=1.0
    )
    registry = ModelRegistry(CATALOGUE, tmp_path, "cpu")
    backend = Scripted(script)
    runtime = WorkerRuntime(
        settings=settings,
        catalogue=CATALOGUE,
        profile=WorkerProfile(),
        store=JobStore(engine),
        registry=registry,
        policy=RetryPolicy(max_retries=2, downgrades=dict(CATALOGUE.downgrades or {}), cooldown_s=60.0),
        limiter=RateLimiter(None),
        cooldowns=LocalCooldowns(),
        lease=Lease(owner="host:1", seconds=30.0, alive=lambda owner: owner == "host:1"),
        backend_context=BackendContext(settings, CATALOGUE, registry, max_batch=64),
        backends={"echo": backend},
    )
    return Cluster(runtime, backend)


GENERATE = {"kind": "generate", "prompt": "hello there", "use_cache": False}
PATHS: list[tuple[str, dict[str, Any], dict[str, list[Step]], Outcome, list[tuple[str, str]], list[str]]] = [
    # (what it shows, request options, script, final status, attempts (model, status), queues re-published to)
    ("the first model answers", {}, {}, Outcome.SUCCEEDED, [("m/a", "succeeded")], []),
    (
        "503: retried on the downgraded model",
        {},
        {"m/a": [ModelLoading("503")]},
        Outcome.SUCCEEDED,
        [("m/a", "failed"), ("m/a-small", "succeeded")],
        ["fast"],
    ),
    (
        "5xx retried max_retries times, then the next model in the same message",
        {},
        {"m/a": [ServerError("500")]},
        Outcome.SUCCEEDED,
        [("m/a", "failed")] * 3 + [("m/b", "succeeded")],
        ["fast", "fast"],
    ),
    (
        "404: the next model at once",
        {},
        {"m/a": [ModelNotFound("404")]},
        Outcome.SUCCEEDED,
        [("m/a", "failed"), ("m/b", "succeeded")],
        [],
    ),
    (
        "401: failed at once, no other model",
        {},
        {"m/a": [Unauthorised("401")]},
        Outcome.FAILED,
        [("m/a", "failed")],
        [],
    ),
    (
        "the chain spent: the next tier's queue, its first model",
        {},
        {"m/a": [ModelNotFound("404")], "m/b": [ModelNotFound("404")]},
        Outcome.SUCCEEDED,
        [("m/a", "failed"), ("m/b", "failed"), ("m/c", "succeeded")],
        ["balanced"],
    ),
    (
        "fallback model: no other tier",
        {"fallback": "model"},
        {"m/a": [ModelNotFound("404")], "m/b": [ModelNotFound("404")]},
        Outcome.FAILED,
        [("m/a", "failed"), ("m/b", "failed")],
        [],
    ),
    (
        "fallback none: the first model only",
        {"fallback": "none"},
        {"m/a": [ModelNotFound("404")]},
        Outcome.FAILED,
        [("m/a", "failed")],
        [],
    ),
    (
        "every tier spent: failed after two hops",
        {},
        {m: [ModelNotFound("404")] for m in ("m/a", "m/b", "m/c", "m/d")},
        Outcome.FAILED,
        [("m/a", "failed"), ("m/b", "failed"), ("m/c", "failed"), ("m/d", "failed")],
        ["balanced", "quality"],
    ),
    (
        "a bug in a backend fails the job, not the worker",
        {},
        {"m/a": [RuntimeError("boom")]},
        Outcome.FAILED,
        [("m/a", "failed")],
        [],
    ),
]


@pytest.mark.parametrize(
    ("options", "script", "final", "attempts", "queues"),
    [row[1:] for row in PATHS],
    ids=[row[0] for row in PATHS],
)
def test_a_jobs_path_through_failures(
    tmp_path: Path,
    options: dict[str, Any],
    script: dict[str, list[Step]],
    final: Outcome,
    attempts: list[tuple[str, str]],
    queues: list[str],
) -> None:
    cluster = make_cluster(tmp_path, script)
    job_id = cluster.submit({**GENERATE, **options})
    outcomes = cluster.drive(job_id)
    assert outcomes[-1] == final
    assert cluster.runtime.store.status(job_id) == final
    assert cluster.path(job_id) == attempts
    assert [queue for queue, _, _ in cluster.republished] == queues
    assert all(outcome in (Outcome.RETRYING, Outcome.DEFERRED) for outcome in outcomes[:-1])


def test_retry_delays_follow_the_policy_and_resume_where_they_failed(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, {"m/a": [RateLimited("429"), RateLimited("429"), "ok"]})
    job_id = cluster.submit(GENERATE)
    assert cluster.drive(job_id) == [Outcome.RETRYING, Outcome.RETRYING, Outcome.SUCCEEDED]
    assert cluster.republished == [("fast", Cursor(0, 1, "m/a"), 1.0), ("fast", Cursor(0, 2, "m/a"), 2.0)]
    attempt_delays = [attempt.delay_s for attempt in cluster.runtime.store.attempts(job_id)]
    assert attempt_delays == [1.0, 2.0, None]


def test_a_retried_deferred_or_escalated_job_keeps_its_priority(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, {"m/a": [RateLimited("429"), ModelNotFound("404")], "m/b": [ModelNotFound("404")]})
    job_id = cluster.submit({**GENERATE, "priority": 7})
    assert cluster.drive(job_id)[-1] == Outcome.SUCCEEDED
    assert [queue for queue, _, _ in cluster.republished] == ["fast", "balanced"]
    assert cluster.priorities == [7, 7]


def test_a_bulk_job_falls_back_within_the_bulk_lane(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, {"m/a": [ModelNotFound("404")], "m/b": [ModelNotFound("404")]})
    job_id = cluster.submit(GENERATE, bulk=True)
    assert cluster.drive(job_id)[-1] == Outcome.SUCCEEDED
    assert [queue for queue, _, _ in cluster.republished] == ["balanced.bulk"]


def test_a_cooling_model_is_passed_over_and_recorded(cluster: Cluster) -> None:
    cluster.runtime.cooldowns.cool("m/a", 30.0)
    job_id = cluster.submit(GENERATE)
    assert cluster.drive(job_id) == [Outcome.SUCCEEDED]
    assert cluster.path(job_id) == [("m/a", "skipped"), ("m/b", "succeeded")]
    assert cluster.backend.calls == [("m/b", 1)]


def test_when_every_model_cools_the_job_waits_for_the_first_back(cluster: Cluster) -> None:
    cluster.runtime.cooldowns.cool("m/a", 30.0)
    cluster.runtime.cooldowns.cool("m/b", 10.0)
    job_id = cluster.submit({**GENERATE, "fallback": "model"})
    assert cluster.drive(job_id, most=1) == [Outcome.DEFERRED]
    (queue, cursor, delay_s) = cluster.republished[0]
    assert (queue, cursor) == ("fast", Cursor())
    assert 9.0 < delay_s <= 10.0
    assert cluster.runtime.store.status(job_id) == JobStatus.QUEUED
    assert cluster.backend.calls == []


def test_failures_cool_a_model_down_for_the_next_jobs(cluster: Cluster) -> None:
    cluster.backend.script["m/a"] = [Unauthorised("401")]  # one 401 cools the model down cluster-wide
    first = cluster.submit(GENERATE)
    assert cluster.drive(first) == [Outcome.FAILED]
    second = cluster.submit(GENERATE)
    assert cluster.drive(second) == [Outcome.SUCCEEDED]
    assert cluster.path(second) == [("m/a", "skipped"), ("m/b", "succeeded")]


def test_over_the_tier_rate_limit_a_job_is_deferred_not_run(cluster: Cluster) -> None:
    first, second = cluster.submit({**GENERATE, "tier": "quality"}), cluster.submit({**GENERATE, "tier": "quality"})
    assert cluster.drive(first) == [Outcome.SUCCEEDED]
    assert cluster.drive(second, most=1) == [Outcome.DEFERRED]
    assert cluster.backend.calls == [("m/d", 1)]  # one call a minute
    assert 0 < cluster.republished[0][2] <= 60 + WINDOW_MARGIN_S  # when the window frees
    assert cluster.runtime.store.attempts(second) == []


def test_a_redelivered_message_of_an_ended_job_changes_nothing(cluster: Cluster) -> None:
    job_id = cluster.submit(GENERATE)
    assert cluster.drive(job_id) == [Outcome.SUCCEEDED]
    assert cluster.drive(job_id) == [Outcome.SUCCEEDED]
    assert cluster.backend.calls == [("m/a", 1)]
    assert len(cluster.runtime.store.attempts(job_id)) == 1


def test_a_message_naming_an_unknown_job_without_its_request_is_rejected(cluster: Cluster) -> None:
    unknown = str(uuid.uuid4())
    assert cluster.drive(unknown) == [Outcome.REJECTED]
    view = cluster.runtime.store.get(unknown)
    assert view is not None and view.error is not None and "job_id" in view.error


EMBED = {"kind": "embed", "input": ["one", "two"], "use_cache": False}


def test_jobs_waiting_together_share_one_model_call(cluster: Cluster) -> None:
    job_ids = [cluster.submit({**EMBED, "input": [f"text {i}"]}) for i in range(5)]
    outcomes = run_jobs(cluster.runtime, "embed", [JobMessage(j, None) for j in job_ids], "w", cluster.reschedule)
    assert outcomes == [Outcome.SUCCEEDED] * 5
    assert cluster.backend.calls == [("e/a", 5)]
    for job_id in job_ids:
        assert cluster.path(job_id) == [("e/a", "succeeded")]
    started = {cluster.runtime.store.attempts(job_id)[0].started_at for job_id in job_ids}
    assert len(started) == 1  # one transaction started them all


def test_a_failed_shared_call_runs_each_job_on_its_own_path(cluster: Cluster) -> None:
    # The shared call fails (404), so each job runs alone: the first meets its own 404, which cools the model
    # down; the others pass it over. Each then moves to the next tier.
    cluster.backend.script["e/a"] = [ModelNotFound("404")]
    job_ids = [cluster.submit({**EMBED, "input": [f"text {i}"]}) for i in range(3)]
    outcomes = run_jobs(cluster.runtime, "embed", [JobMessage(j, None) for j in job_ids], "w", cluster.reschedule)
    assert outcomes == [Outcome.RETRYING] * 3
    assert [queue for queue, _, _ in cluster.republished] == ["balanced"] * 3
    assert cluster.backend.calls == [("e/a", 3), ("e/a", 1)]
    assert [cluster.path(job_id) for job_id in job_ids] == [
        [("e/a", "failed"), ("e/a", "failed")],  # the shared call, then its own
        [("e/a", "failed"), ("e/a", "skipped")],
        [("e/a", "failed"), ("e/a", "skipped")],
    ]


def test_a_backend_without_a_many_call_runs_one_call_per_job(cluster: Cluster) -> None:
    job_ids = [cluster.submit({**GENERATE, "temperature": 0.7}) for _ in range(3)]
    outcomes = run_jobs(cluster.runtime, "generate", [JobMessage(j, None) for j in job_ids], "w", cluster.reschedule)
    assert outcomes == [Outcome.SUCCEEDED] * 3
    assert cluster.backend.calls == [("m/a", 1)] * 3


def test_a_duplicate_of_a_job_another_thread_runs_is_ignored(cluster: Cluster) -> None:
    job_id = cluster.submit(GENERATE)
    assert cluster.runtime.running.claim([job_id]) == [job_id]  # another thread of this process runs it
    assert cluster.drive(job_id) == [Outcome.RUNNING]
    assert cluster.backend.calls == [] and cluster.runtime.store.attempts(job_id) == []
    cluster.runtime.running.release([job_id])
    assert cluster.drive(job_id) == [Outcome.SUCCEEDED]


def test_a_group_leaves_a_job_another_thread_runs_to_that_thread(cluster: Cluster) -> None:
    job_ids = [cluster.submit({**EMBED, "input": [f"text {i}"]}) for i in range(3)]
    cluster.runtime.running.claim([job_ids[1]])
    outcomes = run_jobs(cluster.runtime, "embed", [JobMessage(j, None) for j in job_ids], "w", cluster.reschedule)
    assert outcomes == [Outcome.RUNNING, Outcome.SUCCEEDED, Outcome.SUCCEEDED]  # the one left out comes first
    assert cluster.backend.calls == [("e/a", 2)]
    assert cluster.runtime.store.attempts(job_ids[1]) == []
    assert cluster.runtime.running.claim(job_ids) == [job_ids[0], job_ids[2]]  # the group released its own


REFUSED = DataError("INSERT …", {}, Exception("invalid byte sequence for encoding"))


@pytest.mark.parametrize(
    ("write", "script"),
    [
        ("succeed", {}),  # (the record the database refuses, and what the model does)
        ("fail_attempts", {"m/a": [Unauthorised("401")]}),
    ],
    ids=["its success", "its failed attempt"],
)
def test_an_outcome_the_database_refuses_ends_the_job_failed_with_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str, script: dict[str, list[Step]]
) -> None:
    cluster = make_cluster(tmp_path, script)
    job_id = cluster.submit({**GENERATE, "fallback": "none"})

    def refuse(*_: Any, **__: Any) -> None:
        raise REFUSED

    monkeypatch.setattr(cluster.runtime.store, write, refuse)
    assert cluster.drive(job_id) == [Outcome.FAILED]
    job = cluster.runtime.store.get(job_id)
    assert job is not None and job.status == JobStatus.FAILED
    assert job.error == "its outcome could not be recorded (Exception: invalid byte sequence for encoding)"
    assert AttemptStatus.RUNNING not in [status for _, status in cluster.path(job_id)]  # no attempt left open


def test_a_group_whose_record_is_refused_is_recorded_job_by_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make_cluster(tmp_path, {})
    ids = [cluster.submit({"kind": "embed", "input": f"text {n}", "use_cache": False}) for n in range(3)]

    succeed = cluster.runtime.store.succeed

    def refuse_together(answers: list[Success]) -> None:
        if len(answers) > 1:
            raise REFUSED
        succeed(answers)

    monkeypatch.setattr(cluster.runtime.store, "succeed", refuse_together)
    messages = [JobMessage(job_id, None) for job_id in ids]
    assert run_jobs(cluster.runtime, "embed", messages, "worker-1", cluster.reschedule) == [Outcome.SUCCEEDED] * 3
    assert cluster.backend.calls == [("e/a", 3)]  # one shared call; only its record went job by job
    assert all(cluster.path(job_id) == [("e/a", "succeeded")] for job_id in ids)


def test_what_follows_a_jobs_end_runs_once_for_each_job_alone_or_together(cluster: Cluster) -> None:
    heard: list[tuple[str, JobStatus]] = []
    cluster.runtime.end_hooks.append(lambda ended: heard.extend((job.job_id, job.status) for job in ended))
    alone = cluster.submit(GENERATE)
    assert cluster.drive(alone) == [Outcome.SUCCEEDED]
    together = [cluster.submit({"kind": "embed", "input": f"text {n}", "use_cache": False}) for n in range(3)]
    messages = [JobMessage(job_id, None) for job_id in together]
    assert run_jobs(cluster.runtime, "embed", messages, "worker-1", cluster.reschedule) == [Outcome.SUCCEEDED] * 3
    retried = cluster.submit(GENERATE)
    cluster.backend.script["m/a"] = [ServerError("500"), "ok"]
    assert cluster.drive(retried) == [Outcome.RETRYING, Outcome.SUCCEEDED]  # a retry is not an end
    assert heard == [(job_id, JobStatus.SUCCEEDED) for job_id in [alone, *together, retried]]


# ---- the rest of a job's lifecycle: cancelled, expired, taken over, recovered, answered from the cache ----------


def test_a_job_cancelled_while_it_waits_never_runs(cluster: Cluster) -> None:
    job_id = cluster.submit(GENERATE)
    assert cluster.runtime.store.cancel([job_id]).cancelled == [job_id]
    assert cluster.drive(job_id) == [Outcome.CANCELLED]  # its message comes all the same, and changes nothing
    assert cluster.backend.calls == [] and cluster.path(job_id) == []


def test_a_job_cancelled_while_it_runs_ends_cancelled_with_what_it_made(cluster: Cluster) -> None:
    heard: list[tuple[str, JobStatus]] = []
    cluster.runtime.end_hooks.append(lambda ended: heard.extend((job.job_id, job.status) for job in ended))
    job_id = cluster.submit(GENERATE)
    cluster.backend.during_call = lambda: cluster.runtime.cancels.heard([job_id])  # the notice comes mid-call
    assert cluster.drive(job_id) == [Outcome.CANCELLED]
    job = cluster.runtime.store.get(job_id)
    assert job is not None and job.status == JobStatus.CANCELLED and job.error == CANCELLED_BY_CALLER
    assert job.result is not None and job.result["usage"]["total_tokens"] > 0  # what it made, and used, is kept
    assert cluster.path(job_id) == [("m/a", AttemptStatus.CANCELLED)]
    assert heard == [(job_id, JobStatus.CANCELLED)]


def test_a_job_not_started_by_its_deadline_expires_without_running(cluster: Cluster) -> None:
    job_id = cluster.submit({**GENERATE, "deadline_s": 0.05})
    time.sleep(0.1)
    assert cluster.drive(job_id) == [Outcome.EXPIRED]
    assert cluster.runtime.store.status(job_id) == JobStatus.EXPIRED and cluster.backend.calls == []


def test_a_job_within_its_deadline_runs(cluster: Cluster) -> None:
    assert cluster.drive(cluster.submit({**GENERATE, "deadline_s": 60})) == [Outcome.SUCCEEDED]


def test_a_job_whose_worker_died_is_taken_over_and_the_dead_runs_attempt_closed_lost(cluster: Cluster) -> None:
    job_id = cluster.submit(GENERATE)
    dead = Lease(owner="host:0", seconds=300.0, alive=lambda _: True)  # this runtime knows host:0 is dead
    assert cluster.runtime.store.start([job_id], AttemptSpec("m/a", "echo", "fast", "worker-0"), dead).started
    assert cluster.drive(job_id) == [Outcome.SUCCEEDED]
    assert cluster.path(job_id) == [("m/a", AttemptStatus.LOST), ("m/a", AttemptStatus.SUCCEEDED)]


def test_a_job_a_live_process_runs_is_put_off_until_its_lease_could_run_out(cluster: Cluster) -> None:
    job_id = cluster.submit(GENERATE)
    cluster.runtime.lease = Lease(owner="host:1", seconds=30.0, alive=lambda owner: owner in ("host:1", "host:2"))
    elsewhere = Lease(owner="host:2", seconds=20.0, alive=lambda _: True)
    assert cluster.runtime.store.start([job_id], AttemptSpec("m/a", "echo", "fast", "worker-2"), elsewhere).started
    assert cluster.drive(job_id, most=1) == [Outcome.DEFERRED]
    [(queue, _, delay_s)] = cluster.republished
    assert queue == "fast" and 19.0 < delay_s <= 20.5  # just after the live lease could end
    assert cluster.backend.calls == [] and cluster.path(job_id) == [("m/a", AttemptStatus.RUNNING)]


def test_a_job_whose_lease_ran_out_is_recovered_and_runs_once_more(cluster: Cluster) -> None:
    job_id = cluster.submit(GENERATE)
    short = Lease(owner="host:2", seconds=0.01, alive=lambda _: True)
    assert cluster.runtime.store.start([job_id], AttemptSpec("m/a", "echo", "fast", "worker-2"), short).started
    time.sleep(0.05)
    assert cluster.runtime.store.recover(job_id)  # what the sweeper does with a job whose lease ran out
    assert not cluster.runtime.store.recover(job_id)  # once
    assert cluster.runtime.store.status(job_id) == JobStatus.QUEUED
    assert cluster.drive(job_id) == [Outcome.SUCCEEDED]
    assert cluster.path(job_id) == [("m/a", AttemptStatus.LOST), ("m/a", AttemptStatus.SUCCEEDED)]


def test_an_answer_in_the_cache_ends_a_job_without_a_model_call(cluster: Cluster) -> None:
    request = {**GENERATE, "use_cache": True}
    first, second = cluster.submit(request), cluster.submit(request)
    assert cluster.drive(first) == [Outcome.SUCCEEDED]
    assert cluster.drive(second) == [Outcome.SUCCEEDED]
    assert cluster.backend.calls == [("m/a", 1)]
    answered = cluster.runtime.store.get(second)
    assert answered is not None and answered.cached and cluster.path(second) == []


def test_a_recorded_job_is_never_routed_again_on_the_worker(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    alone = cluster.submit(GENERATE)
    together = [cluster.submit({**EMBED, "input": [f"text {i}"]}) for i in range(3)]

    def no_routing(*_: object, **__: object) -> None:
        raise AssertionError("a recorded job was routed again")

    monkeypatch.setattr("llm_router.broker.routing.route", no_routing)
    monkeypatch.setattr("llm_router.broker.planning.route", no_routing)
    assert cluster.drive(alone) == [Outcome.SUCCEEDED]
    outcomes = run_jobs(cluster.runtime, "embed", [JobMessage(j, None) for j in together], "w", cluster.reschedule)
    assert outcomes == [Outcome.SUCCEEDED] * 3 and ("e/a", 3) in cluster.backend.calls


def test_an_auto_job_sent_to_the_nearest_served_tier_keeps_its_tier_cache_and_group(cluster: Cluster) -> None:
    # Only "balanced" is served: tier="auto" (which alone would pick "fast") is planned there, and the worker
    # keeps that tier, groups the jobs and answers a repeat from the cache.
    served = frozenset({"balanced"})
    request = {"kind": "embed", "input": ["short"], "tier": "auto", "use_cache": True}
    planned = [plan(parse_request({**request, "input": [f"text {i}"]}), CATALOGUE, served=served) for i in range(3)]
    assert {p.route.tier for p in planned} == {"balanced"}
    job_ids = [str(uuid.uuid4()) for _ in planned]
    cluster.runtime.store.submit([p.new_job(j) for p, j in zip(planned, job_ids, strict=True)])
    outcomes = run_jobs(cluster.runtime, "embed", [JobMessage(j, None) for j in job_ids], "w", cluster.reschedule)
    assert outcomes == [Outcome.SUCCEEDED] * 3 and cluster.backend.calls == [("e/c", 3)]
    repeat = plan(parse_request({**request, "input": ["text 0"]}), CATALOGUE, served=served)
    assert repeat.cache_key == planned[0].cache_key
    again = str(uuid.uuid4())
    cluster.runtime.store.submit([repeat.new_job(again)])
    assert cluster.drive(again, kind="embed") == [Outcome.SUCCEEDED]
    assert cluster.backend.calls == [("e/c", 3)]  # no second call: answered from the cache


def test_a_catalogue_changed_while_a_job_waits_applies_to_the_models_it_tries(cluster: Cluster) -> None:
    job_id = cluster.submit(GENERATE)
    changed = CATALOGUE.model_copy(
        update={"tiers": {**CATALOGUE.tiers, "fast": CATALOGUE.tiers["fast"].model_copy(update={"generate": ["m/b"]})}}
    )
    cluster.runtime = replace(cluster.runtime, catalogue=changed)
    assert cluster.drive(job_id) == [Outcome.SUCCEEDED]
    assert cluster.path(job_id) == [("m/b", "succeeded")]


def test_a_job_whose_tier_left_the_catalogue_fails_naming_it(cluster: Cluster) -> None:
    job_id = cluster.submit({**GENERATE, "tier": "quality"})
    tiers = {name: tier for name, tier in CATALOGUE.tiers.items() if name != "quality"}
    trimmed = CATALOGUE.model_copy(update={"tiers": tiers, "tier_order": ["fast", "balanced"]})
    cluster.runtime = replace(cluster.runtime, catalogue=trimmed)
    assert cluster.drive(job_id) == [Outcome.FAILED]
    job = cluster.runtime.store.get(job_id)
    assert job is not None and "tier 'quality' is no longer in the catalogue" in (job.error or "")
    assert cluster.backend.calls == []
