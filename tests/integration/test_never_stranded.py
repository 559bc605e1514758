"""No job stranded, none run twice, whatever a model answers or a host believes: a NUL in a model's answer or
error body, a worker whose clock is a minute behind beside a sweeper a minute ahead, a worker in another
pid namespace under the same host name, and attempts left open on jobs that ended. On the real Redis,
PostgreSQL and worker subprocesses, against a scripted API on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import glob
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.tasks.database import make_engine
from llm_router.tasks.errors import JobFailed
from llm_router.tasks.records import AttemptStatus
from llm_router.tasks.schemas import GenerateResult, Usage
from llm_router.tasks.store import JobStore, Lease, Success
from tests.conftest import WorkerProcess, catalogue_env, catalogue_settings
from tests.support import inference_server as api
from tests.support.inference_server import InferenceServer, Reply
from tests.support.store import start_one, submit_one, succeed_one

BROKER = "redis://127.0.0.1:6379/0"
NUL_MODEL, SKEWED_MODEL, SPACED_MODEL = "org/nul-chat", "org/slow-skewed", "org/slow-spaced"
IN_FLIGHT = 10
CALL_S = {"skewed": 12.0, "spaced": 8.0}
REMOTE = ("--pool", "remote", "--processes", "1", "--concurrency", str(IN_FLIGHT))  # one process: one lease owner
CHAT = [{"role": "user", "content": "Say something."}]


def _catalogue(url: str) -> str:
    return f"""
default_tier = "stranded"
tier_order = ["stranded", "skewed", "spaced"]
[tiers.stranded]
pool = "remote"
generate = ["{NUL_MODEL}"]
[tiers.skewed]
pool = "remote"
generate = ["{SKEWED_MODEL}"]
[tiers.spaced]
pool = "remote"
generate = ["{SPACED_MODEL}"]
[models."{NUL_MODEL}"]
provider = "openai"
base_url = "{url}/nul"
[models."{SKEWED_MODEL}"]
provider = "openai"
base_url = "{url}/skewed"
[models."{SPACED_MODEL}"]
provider = "openai"
base_url = "{url}/spaced"
"""


def _path(tier: str) -> str:
    return f"/{'nul' if tier == 'stranded' else tier}/v1/chat/completions"


@pytest.fixture(scope="module")
def server() -> Iterator[InferenceServer]:
    server = InferenceServer().start()
    server.on(_path("stranded"), api.openai_chat)
    for tier, seconds in CALL_S.items():
        server.on(_path(tier), lambda body, s=seconds: dataclasses.replace(api.openai_chat(body), delay_s=s))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(server: InferenceServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # No sweeper unless a test starts one: which process sweeps is part of what each test sets up.
    return catalogue_env(
        tmp_path_factory.mktemp("stranded"),
        _catalogue(server.url),
        BROKER,
        LLM_ROUTER_RETRY_DELAY_SCALE="0.01",
        LLM_ROUTER_SWEEP_INTERVAL_S="0",
    )


@pytest.fixture(scope="module")
def router(cluster_settings: Settings, env: dict[str, str]) -> Iterator[Router]:
    with Router(catalogue_settings(cluster_settings, env)) as router:
        yield router


def _chat(content: str) -> dict[str, object]:
    body = api.openai_chat({"model": NUL_MODEL}).body
    body["choices"][0]["message"]["content"] = content
    return body


def _generate(router: Router, tier: str, text: str = "Say something.") -> object:
    return router.generate(messages=[{"role": "user", "content": text}], tier=tier, fallback="none", use_cache=False)


# ---- 1. a NUL in what a model sends ----------------------------------------------------------------------


def test_a_nul_in_an_answer_or_an_error_body_ends_the_job(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router, server: InferenceServer
) -> None:
    worker = start_worker("stranded", "nul", env=env, options=REMOTE)
    path = _path("stranded")

    server.script(path, Reply(200, _chat("before\u0000after")))
    answered = _generate(router, "stranded", "an answer with a NUL")
    result = answered.wait(timeout=30)  # type: ignore[attr-defined]
    assert isinstance(result, GenerateResult) and result.text == "before\ufffdafter"

    server.script(path, Reply(400, {"error": "cannot take \u0000 here"}))
    refused = _generate(router, "stranded", "a refusal with a NUL")
    with pytest.raises(JobFailed):
        refused.wait(timeout=30)  # type: ignore[attr-defined]
    assert "cannot take \ufffd here" in (refused.record().error or "")  # type: ignore[attr-defined]

    server.script(path, Reply(503, {"error": "warming \u0000 up", "estimated_time": 1}), Reply(200, _chat("ready")))
    retried = _generate(router, "stranded", "a 503 with a NUL, then an answer")
    assert retried.wait(timeout=30).text == "ready"  # type: ignore[attr-defined]
    attempts = retried.attempts()  # type: ignore[attr-defined]
    assert [a.status for a in attempts] == [AttemptStatus.FAILED, AttemptStatus.SUCCEEDED] and "\ufffd" in (
        attempts[0].error or ""
    )
    assert worker.alive()
    worker.stop()


# ---- 2. clocks a minute apart -----------------------------------------------------------------------------

# libfaketime (Debian's faketime package) shifts a process's clock when preloaded: the worker itself stays the
# test's child, so stopping it stops it.
LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), "libfaketime.so.1 not found")


def shifted(offset: str) -> dict[str, str]:
    """Environment that runs a process ``offset`` (e.g. "-60s") off the real clock (its monotonic clock kept)."""
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def _in_flight(server: InferenceServer, tier: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(server.calls_to(_path(tier))) < count:
        assert time.monotonic() < deadline, f"{len(server.calls_to(_path(tier)))} calls of {count} under way"
        time.sleep(0.1)


def _each_ran_once(router: Router, server: InferenceServer, tier: str, jobs: list[object]) -> None:
    for job in jobs:
        assert isinstance(job.wait(timeout=90), GenerateResult)  # type: ignore[attr-defined]
    assert len(server.calls_to(_path(tier))) == len(jobs)  # no job's call was made twice
    for job in jobs:
        assert [a.status for a in job.attempts()] == [AttemptStatus.SUCCEEDED]  # type: ignore[attr-defined]


def test_a_worker_a_minute_behind_beside_a_sweeper_a_minute_ahead_runs_no_job_twice(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router, server: InferenceServer
) -> None:
    server.reset()
    behind = start_worker("skewed", "behind", env={**env, **shifted("-60s")}, options=REMOTE)
    jobs = [_generate(router, "skewed", f"skewed {i}") for i in range(IN_FLIGHT)]
    _in_flight(server, "skewed", IN_FLIGHT)  # the worker a minute behind holds them all, mid-call
    # A worker a minute ahead, whose sweeper looks every second at jobs it could take over.
    ahead_env = {**env, **shifted("+60s"), "LLM_ROUTER_SWEEP_INTERVAL_S": "1"}
    ahead = start_worker("skewed", "ahead", env=ahead_env, options=REMOTE)
    _each_ran_once(router, server, "skewed", jobs)
    assert "recovered" not in ahead.log()
    behind.stop()
    ahead.stop()


# ---- 3. one host name, two pid namespaces ------------------------------------------------------------------


def _free_pids(width: int = 200) -> int:
    """The first of ``width`` pids no process of this namespace uses, high up: what another namespace's
    processes are given below."""
    used = {int(name) for name in os.listdir("/proc") if name.isdigit()}
    top = int(Path("/proc/sys/kernel/pid_max").read_text()) - width - 1
    start = next(s for s in range(top, 300, -width) if not used & set(range(s, s + width)))
    return start


def test_a_worker_in_another_pid_namespace_is_never_taken_for_dead(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router, server: InferenceServer
) -> None:
    server.reset()
    first_pid = _free_pids()
    # Another pid namespace under this host name (containers on the host's network): its processes get pids
    # from first_pid on, which name no process here.
    unshare = (
        "unshare", "-p", "-f", "--mount-proc", "--kill-child=SIGTERM", "sh", "-c",
        f'echo {first_pid} > /proc/sys/kernel/ns_last_pid; "$@" & child=$!; '
        'trap "kill -TERM $child" TERM; wait $child; wait $child',
        "sh",
    )  # fmt: skip
    apart = start_worker("spaced", "apart", env=env, options=REMOTE, wrapper=unshare)
    jobs = [_generate(router, "spaced", f"spaced {i}") for i in range(IN_FLIGHT)]
    _in_flight(server, "spaced", IN_FLIGHT)
    owners = {job.record().lease_owner for job in jobs}  # type: ignore[attr-defined]
    (owner,) = owners
    pid = int(str(owner).rpartition(":")[2])
    assert pid > first_pid  # the premise: here, that pid names no process
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    beside = start_worker("spaced", "beside", env=env, options=REMOTE)
    for job in jobs:  # a batch submitted again, a requeue: a second message for every running job
        router.submitter.publish(job.id, "generate", "spaced", 1)
    _each_ran_once(router, server, "spaced", jobs)
    assert "its message is put off" in beside.log()
    apart.kill_whole()  # `unshare --fork` waits for its child with SIGTERM blocked: stopped, it would not stop
    beside.stop()


# ---- 4. attempts left open on a job that ended -------------------------------------------------------------


@pytest.fixture
def store(pg_url: str) -> Iterator[JobStore]:
    store = JobStore(make_engine(pg_url))
    yield store
    store.engine.dispose()


def _result(text: str) -> GenerateResult:
    return GenerateResult(
        text=text, model="m", tier="t", usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    )


def _succeed_in_one_statement(store: JobStore, job_id: str, number: int) -> None:
    succeed_one(store, job_id, number, result=_result("a"), provider="openai", model_latency_ms=1.0)


def _succeed_in_a_transaction(store: JobStore, job_id: str, number: int) -> None:
    store.one_statement_writes = False  # SQLite's way
    try:
        succeed_one(store, job_id, number, result=_result("b"), provider="openai", model_latency_ms=1.0)
    finally:
        store.one_statement_writes = True


def _succeed_among_others(store: JobStore, job_id: str, number: int) -> None:
    other = str(uuid.uuid4())
    submit_one(store, job_id=other, kind="generate", request={"prompt": "hi"}, tier="t", queue="t")
    started = start_one(
        store, other, model="m", provider="openai", tier="t", worker="c", lease=Lease("c#z:3", 30.0, lambda _: True)
    )
    assert started == 1
    answers = [Success(job_id, number, _result("c"), "openai", 1.0), Success(other, 1, _result("d"), "openai", 1.0)]
    store.succeed(answers)
    assert store.get(other).is_final  # type: ignore[union-attr]


ENDINGS: list[Callable[[JobStore, str, int], None]] = [
    _succeed_in_one_statement,
    _succeed_in_a_transaction,
    _succeed_among_others,
    lambda store, job_id, _: store.fail([job_id], "every model failed"),
    lambda store, job_id, _: store.reject(job_id, "generate", "bad request"),
]
NAMES = ["succeeded in one statement", "succeeded in a transaction", "succeeded among others", "failed", "rejected"]


@pytest.mark.parametrize("ending", ENDINGS, ids=NAMES)
def test_a_job_that_ends_leaves_no_attempt_open(store: JobStore, ending: Callable[[JobStore, str, int], None]) -> None:
    job_id = str(uuid.uuid4())
    submit_one(store, job_id=job_id, kind="generate", request={"prompt": "hi"}, tier="t", queue="t")
    first = start_one(
        store, job_id, model="m", provider="openai", tier="t", worker="a", lease=Lease("a#x:1", 0.001, lambda _: True)
    )
    time.sleep(0.05)
    assert store.recover(job_id)  # its lease ran out: the sweeper took the run for lost
    second = start_one(
        store, job_id, model="m", provider="openai", tier="t", worker="b", lease=Lease("b#y:2", 30.0, lambda _: True)
    )
    assert isinstance(first, int) and isinstance(second, int)
    ending(store, job_id, first)  # the first run was alive after all, and ends the job
    assert store.get(job_id).is_final  # type: ignore[union-attr]
    assert AttemptStatus.RUNNING not in [attempt.status for attempt in store.attempts(job_id)]
