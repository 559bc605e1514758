"""The remote pool's event loops on both fleet brokers: hundreds of calls in flight from one process, a process
killed with hundreds in flight, a cancel that closes its HTTP call, a stream, a rate limit held across processes."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.tasks.errors import JobCancelled
from llm_router.tasks.schemas import GenerateResult
from tests.conftest import ON_BOTH_BROKERS, WorkerProcess, empty_redis_db, producer_settings, second_run
from tests.integration.test_remote_pool import most_at_once
from tests.support import inference_server as api
from tests.support.inference_server import InferenceServer, Reply
from tests.support.store import usage_and_paths

pytestmark = ON_BOTH_BROKERS
BROKER = "redis://127.0.0.1:6379/2"
SHARED = BROKER  # the shared state (rate limits, cancels, streams) on both brokers: a fleet on RabbitMQ has a Redis
MANY, CALL_S = 500, 1.0
KILLED, SLOW_S = 300, 3.0
INSPECTED = 12  # jobs of SLOW_S listed by `celery inspect active`
CANCELLED_S = 30.0  # the call a cancel closes would take this long
LIMIT = 20  # calls a minute


def _catalogue(url: str) -> str:
    tiers = {
        "aio": (f"{url}/second", ""),
        "aio_slow": (f"{url}/slow", ""),
        "aio_cancel": (f"{url}/cancel", ""),
        "aio_stream": (url, ""),
        "aio_limited": (url, f"requests_per_minute = {LIMIT}\n"),
    }
    text = 'default_tier = "aio"\ntier_order = ["aio"]\n'
    for tier, (base_url, limit) in tiers.items():
        text += f'[tiers.{tier}]\npool = "remote"\ngenerate = ["org/{tier}"]\n{limit}'
        text += f'[models."org/{tier}"]\nprovider = "openai"\nbase_url = "{base_url}"\n'
    return text


def _after(seconds: float) -> Callable[[Any], Reply]:
    return lambda body: dataclasses.replace(api.openai_chat(body), delay_s=seconds)


@pytest.fixture(scope="module")
def server() -> Iterator[InferenceServer]:
    server = InferenceServer().start()
    server.on("/second/v1/chat/completions", _after(CALL_S))
    server.on("/slow/v1/chat/completions", _after(SLOW_S))
    server.on("/cancel/v1/chat/completions", _after(CANCELLED_S))
    server.on("/v1/chat/completions", api.openai_chat_streaming)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def broker(request: pytest.FixtureRequest, rabbit_vhost: Callable[[str], str]) -> str:
    empty_redis_db(SHARED)  # no window of a rate limit left from the other broker's run
    return BROKER if request.param == "redis" else rabbit_vhost("async-pool")


@pytest.fixture(scope="module")
def env(
    cluster_env: dict[str, str], broker: str, server: InferenceServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    config = tmp_path_factory.mktemp("async-pool") / "catalogue.toml"
    config.write_text(_catalogue(server.url))
    return {
        **cluster_env,
        "LLM_ROUTER_BROKER_URL": broker,
        "LLM_ROUTER_REDIS_URL": SHARED,
        "LLM_ROUTER_CONFIG": str(config),
        "LLM_ROUTER_LEASE_S": "3",  # a killed process's jobs are taken over 3 s after
        **second_run(broker),
    }


@pytest.fixture(scope="module")
def router(cluster_settings: Settings, env: dict[str, str], broker: str) -> Iterator[Router]:
    update = {"config": Path(env["LLM_ROUTER_CONFIG"]), "redis_url": SHARED}
    settings = producer_settings(cluster_settings, broker).model_copy(update=update)
    with Router(settings) as router:
        yield router


def _worker(
    start: Callable[..., WorkerProcess], env: dict[str, str], queues: str, name: str, *options: str
) -> WorkerProcess:
    on = "rabbit" if env["LLM_ROUTER_BROKER_URL"].startswith("amqp") else "redis"
    return start(queues, f"{name}-{on}", env=env, options=("--pool", "remote", *options))


def _chat(router: Router, tier: str, i: int) -> Any:
    messages = [{"role": "user", "content": f"question {i} at {time.time()}"}]
    return router.generate(messages=messages, tier=tier, max_tokens=10, use_cache=False)


def test_one_process_keeps_500_calls_in_flight(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router, server: InferenceServer
) -> None:
    server.reset()
    jobs = [_chat(router, "aio", i) for i in range(MANY)]  # waiting when the worker starts
    worker = _worker(start_worker, env, "aio", "aio-many", "--processes", "1", "--concurrency", str(MANY))
    results = [job.wait(timeout=120) for job in jobs]
    assert all(isinstance(result, GenerateResult) for result in results)
    calls = server.calls_to("/second/v1/chat/completions")
    assert len(calls) == MANY
    # Each call takes a second at the stand-in: nearly all of them were under way at one moment.
    assert most_at_once([call.at for call in calls], CALL_S) >= MANY * 9 // 10
    assert all(len(job.attempts()) == 1 for job in jobs)
    worker.stop()


def test_a_process_killed_with_hundreds_in_flight_loses_none_and_runs_none_twice(
    start_worker: Callable[..., WorkerProcess],
    env: dict[str, str],
    router: Router,
    server: InferenceServer,
    pg_url: str,
    broker: str,
) -> None:
    server.reset()
    options = ("--processes", "1", "--concurrency", str(KILLED))
    doomed = _worker(start_worker, env, "aio_slow", "aio-doomed", *options)
    jobs = [_chat(router, "aio_slow", i) for i in range(KILLED)]
    deadline = time.monotonic() + 60
    while len(server.calls_to("/slow/v1/chat/completions")) < KILLED:  # every call under way (3 s each)
        assert time.monotonic() < deadline, len(server.calls_to("/slow/v1/chat/completions"))
        time.sleep(0.01)
    doomed.kill_whole()
    assert not any(job.status() == "succeeded" for job in jobs)  # cut off, all of them
    survivor = _worker(start_worker, env, "aio_slow", "aio-survivor", *options)
    if broker.startswith("redis"):
        # Redis keeps a dead consumer's messages unacknowledged until its visibility timeout; once the leases
        # have run out (3 s), `requeue --stale` publishes them (the sweeper does it in a fleet).
        time.sleep(4.5)
        assert {job.id for job in jobs} <= {job.id for job in router.requeue_stale(1.0).requeued}
    # RabbitMQ hands a closed connection's messages out again at once.
    results = [job.wait(timeout=120) for job in jobs]
    assert all(isinstance(result, GenerateResult) for result in results)
    usage, paths = usage_and_paths(pg_url, [job.id for job in jobs])
    assert usage == [1] * KILLED  # each job counted once
    assert paths == {"lost,succeeded"}  # the attempt cut off, then the one that finished
    assert len(server.calls_to("/slow/v1/chat/completions")) == 2 * KILLED
    survivor.stop()


def test_celery_inspect_lists_what_the_loops_run_and_hold(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router, server: InferenceServer
) -> None:
    server.reset()
    worker = _worker(start_worker, env, "aio_slow", "aio-inspect", "--processes", "2", "--concurrency", "20")
    jobs = [_chat(router, "aio_slow", i) for i in range(INSPECTED)]
    held = router.app.send_task(  # a countdown's message is held by a loop until it is due, as Celery holds it
        "llm_router.generate", args=["no-such-job"], queue="aio_slow", routing_key="aio_slow", countdown=60
    )
    inspect = router.app.control.inspect(destination=[worker.nodename], timeout=5, limit=1)  # one reply: no wait
    deadline = time.monotonic() + 30
    active: list[dict[str, Any]] = []
    while len(active) < INSPECTED:  # each call takes 3 s at the stand-in; the loops write their state twice a second
        assert time.monotonic() < deadline, active
        time.sleep(0.25)
        active = (inspect.active() or {}).get(worker.nodename, [])
    assert sorted(task["id"] for task in active) == sorted(job.id for job in jobs)
    assert {task["name"] for task in active} == {"llm_router.generate"}
    assert sorted(task["args"][0] for task in active) == sorted(job.id for job in jobs)
    assert len({task["worker_pid"] for task in active}) >= 1 and all(task["time_start"] for task in active)
    scheduled = (inspect.scheduled() or {}).get(worker.nodename, [])
    assert [entry["request"]["id"] for entry in scheduled] == [held.id]
    assert (inspect.reserved() or {}).get(worker.nodename) == []
    assert all(isinstance(job.wait(timeout=60), GenerateResult) for job in jobs)
    worker.stop()


def test_a_cancel_closes_the_jobs_http_call_at_once(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router, server: InferenceServer
) -> None:
    server.reset()
    worker = _worker(start_worker, env, "aio_cancel", "aio-cancel", "--processes", "1")
    job = _chat(router, "aio_cancel", 0)
    deadline = time.monotonic() + 30
    while not server.calls_to("/cancel/v1/chat/completions"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    closed_before = server.closed_early
    assert job.cancel().running == [job.id]
    began = time.monotonic()
    with pytest.raises(JobCancelled):
        job.wait(CANCELLED_S)
    assert time.monotonic() - began < CANCELLED_S / 3  # not the call's 30 s: it was closed
    deadline = time.monotonic() + 5
    while server.closed_early == closed_before:  # the stand-in sees its client go
        assert time.monotonic() < deadline, "the HTTP call was left open"
        time.sleep(0.05)
    record = job.record()
    assert record.status == "cancelled"
    assert [attempt.status for attempt in job.attempts()] == ["cancelled"]
    worker.stop()


def test_a_stream_through_the_event_loop_pool(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router, server: InferenceServer
) -> None:
    worker = _worker(start_worker, env, "aio_stream", "aio-stream", "--processes", "1")
    chat = [{"role": "user", "content": f"Capital of France? {time.time()}"}]
    job = router.generate(messages=chat, tier="aio_stream", stream=True, use_cache=False)
    deltas = list(job.stream(30))
    assert "".join(deltas) == "Paris is the capital of France."
    result = job.wait(30)
    assert isinstance(result, GenerateResult) and result.text == "".join(deltas)
    worker.stop()


def test_a_rate_limit_holds_across_the_processes_of_a_worker(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router, server: InferenceServer
) -> None:
    server.reset()
    worker = _worker(start_worker, env, "aio_limited", "aio-limited", "--processes", "2")
    jobs = [_chat(router, "aio_limited", i) for i in range(LIMIT + 10)]
    deadline = time.monotonic() + 30
    while sum(job.status() == "succeeded" for job in jobs) < LIMIT:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(2.0)  # the others are put off until the window frees, not called
    assert len(server.calls_to("/v1/chat/completions")) == LIMIT
    assert sum(job.status() == "succeeded" for job in jobs) == LIMIT
    worker.stop()
