"""The remote pool: one worker process keeps many slow remote calls in flight, on a database pool smaller than
its concurrency, without torch; embed and classify inputs of many jobs travel in few HTTP calls."""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.broker.transports.redis import RedisTransport
from llm_router.tasks.schemas import ClassifyResult, EmbedResult, GenerateResult
from llm_router.workers.held_messages import HeldMessages
from tests.conftest import WorkerProcess, catalogue_env, catalogue_settings, queued
from tests.support import inference_server as api
from tests.support.inference_server import InferenceServer, Reply
from tests.support.store import usage_and_paths

BROKER = "redis://127.0.0.1:6379/2"  # a broker database of its own: this worker has its own catalogue
COMPLETE, TEI_EMBED, TEI_CLS = "org/slow-completion", "org/tei-embed", "org/tei-cls"
# Tier names of their own: `requeue --stale` republishes lost jobs of every test to their tier's queue.
KILLED = "org/cut-off"  # on a tier of its own, served only by the worker that is killed
NARROW, NARROW_SLOTS = "org/narrow", 4  # served only by a worker of 4 slots
BATCHED_SLOTS = 4  # the tier remote_batched, served only by a worker of 4 slots started after its jobs wait
# Two tiers whose models share one provider key, limited to 15 calls a minute across both.
KEYED_A, KEYED_B, KEY_PER_MINUTE = "org/keyed-a", "org/keyed-b", 15
LIMITED, PER_MINUTE = "org/limited", 20
STORMY, STORM_S, RETRY_AFTER_S = "org/stormy", 3.0, 2  # answers 429 (Retry-After: 2) for its first 3 s
IN_FLIGHT = 64
CALL_S = 1.0
PER_CALL = 32


def _catalogue(url: str) -> str:
    # A job whose chain is spent falls back to the next tier in this order: tiers added for one test go last,
    # and remote_stormy's jobs, whose model cools down in the storm, fall back to remote_calm, which the
    # module's worker serves.
    return f"""
default_tier = "remote"
tier_order = ["remote"]
[tiers.remote]
pool = "remote"
generate = ["{COMPLETE}"]
embed = ["{TEI_EMBED}"]
classify = ["{TEI_CLS}"]
[tiers.remote_limited]
pool = "remote"
requests_per_minute = {PER_MINUTE}
generate = ["{LIMITED}"]
[models."{LIMITED}"]
provider = "openai"
base_url = "{url}/limited"
[tiers.remote_stormy]
pool = "remote"
generate = ["{STORMY}"]
[models."{STORMY}"]
provider = "openai"
base_url = "{url}/stormy"
[tiers.remote_calm]
pool = "remote"
generate = ["{COMPLETE}"]
[tiers.remote_killable]
pool = "remote"
generate = ["{KILLED}"]
[models."{KILLED}"]
provider = "openai"
base_url = "{url}/slow"
[models."{COMPLETE}"]
provider = "openai"
base_url = "{url}"
[models."{TEI_EMBED}"]
provider = "tei"
base_url = "{url}"
max_inputs_per_call = {PER_CALL}
[models."{TEI_CLS}"]
provider = "tei"
base_url = "{url}"
max_inputs_per_call = {PER_CALL}
[tiers.remote_key_a]
pool = "remote"
generate = ["{KEYED_A}"]
[tiers.remote_key_b]
pool = "remote"
generate = ["{KEYED_B}"]
[models."{KEYED_A}"]
provider = "hf-inference"
[models."{KEYED_B}"]
provider = "hf-inference"
[tiers.remote_narrow]
pool = "remote"
generate = ["{NARROW}"]
[models."{NARROW}"]
provider = "openai"
base_url = "{url}/narrow"
[tiers.remote_batched]
pool = "remote"
generate = ["{COMPLETE}"]
embed = ["{TEI_EMBED}"]
[providers.hf-inference]
requests_per_minute = {KEY_PER_MINUTE}
"""


def _slow_completion(body: Any) -> Reply:
    return dataclasses.replace(api.openai_completion(body), delay_s=CALL_S)


def _slower_completion(body: Any) -> Reply:
    return dataclasses.replace(api.openai_completion(body), delay_s=3 * CALL_S)


class Storm:
    """Every call is refused with a 429 until ``until`` (monotonic seconds), then answered."""

    until = 0.0

    @classmethod
    def reply(cls, body: Any) -> Reply:
        if time.monotonic() < cls.until:
            return Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": str(RETRY_AFTER_S)})
        return api.openai_completion(body)


@pytest.fixture(scope="module")
def server() -> Iterator[InferenceServer]:
    server = InferenceServer().start()
    server.on("/v1/completions", _slow_completion)
    server.on("/slow/v1/completions", _slower_completion)
    server.on("/narrow/v1/completions", _slower_completion)
    server.on(f"/models/{KEYED_A}", api.hf_generate)
    server.on(f"/models/{KEYED_B}", api.hf_generate)
    server.on("/limited/v1/completions", api.openai_completion)
    server.on("/stormy/v1/completions", Storm.reply)
    server.on("/embed", api.tei_embed)
    server.on("/predict", api.tei_predict)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def remote_env(server: InferenceServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return catalogue_env(
        tmp_path_factory.mktemp("remote-pool"),
        _catalogue(server.url),
        BROKER,
        LLM_ROUTER_DATABASE_POOL_SIZE="2",  # 4 connections at most, for 64 jobs in flight
        LLM_ROUTER_REQUEST_TIMEOUT_S="30",
        HUGGINGFACE_BASE_URL=server.url,
    )


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], remote_env: dict[str, str]) -> WorkerProcess:
    options = ("--pool", "remote", "--concurrency", str(IN_FLIGHT))
    queues = "remote,remote_limited,remote_stormy,remote_calm,remote_key_a,remote_key_b"
    return start_worker(queues, "remote-pool", env=remote_env, options=options)


@pytest.fixture(scope="module")
def router(cluster_settings: Settings, remote_env: dict[str, str]) -> Iterator[Router]:
    with Router(catalogue_settings(cluster_settings, remote_env)) as router:
        yield router


@pytest.fixture
def fresh(server: InferenceServer) -> InferenceServer:
    server.reset()
    return server


def most_at_once(starts: list[float], duration_s: float) -> int:
    """The most calls under way at one moment, each taking ``duration_s`` from its start."""
    ordered = sorted(starts)
    return max((sum(1 for other in ordered if start <= other < start + duration_s) for start in ordered), default=0)


def test_most_at_once_counts_overlaps() -> None:
    assert most_at_once([0.0, 0.5, 0.9, 1.2, 3.0], 1.0) == 3
    assert most_at_once([0.0, 2.0, 4.0], 1.0) == 1


def _info(router: Router, worker: WorkerProcess) -> dict[str, Any]:
    replies = router.app.control.broadcast(
        "llm_router_info", destination=[worker.nodename], reply=True, timeout=5, limit=1
    )
    [info] = [info for reply in replies for info in reply.values()]
    return info  # type: ignore[no-any-return]


def _in_flight(router: Router, worker: WorkerProcess) -> int:
    return int(_info(router, worker)["in_flight"])


def test_one_process_keeps_every_slow_call_in_flight_on_a_small_database_pool(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    jobs = [router.generate(f"question {i}", max_tokens=10) for i in range(IN_FLIGHT)]
    in_flight = [_in_flight(router, worker)]  # what `llm-router status` shows while the calls take their second
    while max(in_flight) < IN_FLIGHT // 2 and not all(job.status() == "succeeded" for job in jobs):
        in_flight.append(_in_flight(router, worker))
    results = [job.wait(timeout=120) for job in jobs]
    assert max(in_flight) >= IN_FLIGHT // 2, in_flight
    assert all(isinstance(result, GenerateResult) and result.model == COMPLETE for result in results)
    calls = fresh.calls_to("/v1/completions")
    assert len(calls) == IN_FLIGHT  # one call per job: none failed for want of a database connection
    # Each call takes a second at the server: had the worker run them a few at a time, few would overlap.
    assert most_at_once([call.at for call in calls], CALL_S) >= IN_FLIGHT * 3 // 4
    assert all(len(job.attempts()) == 1 for job in jobs)
    assert "database unavailable" not in worker.log()


def test_the_remote_pool_runs_without_torch(worker: WorkerProcess, router: Router) -> None:
    processes = _info(router, worker)["processes"]
    assert processes, "the worker published no state"
    assert all(p["pool"] == "remote" and p["torch_loaded"] is False for p in processes), processes
    assert all(p["concurrency"] == IN_FLIGHT for p in processes)


def test_bulk_inputs_travel_in_few_calls_of_at_most_the_models_limit(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    texts = ["a" * (i + 1) for i in range(150)]  # the stand-in's vector starts with the text's length
    submission = router.batch([{"kind": "embed", "input": [sentence]} for sentence in texts])
    results = [submission.jobs[i].wait(timeout=60) for i in range(len(texts))]
    for sentence, result in zip(texts, results, strict=True):
        assert isinstance(result, EmbedResult)
        assert result.data[0].embedding == api.vectors([sentence])[0]  # each job got its own input's vector back
    calls = fresh.calls_to("/embed")
    sizes = [len(call.body["inputs"]) for call in calls]
    assert sum(sizes) == len(texts) and max(sizes) <= PER_CALL
    messages = math.ceil(len(texts) / router.settings.bulk_message_jobs)
    assert len(calls) <= math.ceil(len(texts) / PER_CALL) + messages  # a message's last call may be short


def test_a_failed_shared_call_falls_back_to_one_call_per_job(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    fresh.script("/predict", Reply(422, {"error": "Input validation error: inputs too long"}))
    texts = ["I love this", "I hate this", "I love queues"]
    submission = router.batch([{"kind": "classify", "input": [sentence]} for sentence in texts])
    results = [submission.jobs[i].wait(timeout=60) for i in range(len(texts))]
    assert [r.labels[0].label for r in results if isinstance(r, ClassifyResult)] == [
        "POSITIVE",
        "NEGATIVE",
        "POSITIVE",
    ]
    sizes = [len(call.body["inputs"]) for call in fresh.calls_to("/predict")]
    assert sizes == [3, 1, 1, 1]  # the shared call, refused; then one call per job


def test_a_killed_remote_worker_loses_none_of_its_jobs_in_flight(
    start_worker: Callable[..., WorkerProcess],
    remote_env: dict[str, str],
    router: Router,
    fresh: InferenceServer,
    pg_url: str,
) -> None:
    options = ("--pool", "remote", "--concurrency", str(IN_FLIGHT))
    env = {**remote_env, "LLM_ROUTER_LEASE_S": "3"}
    doomed = start_worker("remote_killable", "remote-killed", env=env, options=options)
    jobs = [router.generate(f"long question {i}", tier="remote_killable", max_tokens=10) for i in range(IN_FLIGHT)]
    deadline = time.monotonic() + 60
    while len(fresh.calls_to("/slow/v1/completions")) < IN_FLIGHT:  # every call under way (each takes 3 s)
        assert time.monotonic() < deadline, len(fresh.calls_to("/slow/v1/completions"))
        time.sleep(0.01)
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait()
    assert not any(job.status() == "succeeded" for job in jobs)  # cut off, all of them
    start_worker("remote_killable", "remote-recovery", env=env, options=options)
    # The dead worker's messages stay unacknowledged until the broker's visibility timeout; its jobs are
    # running under a lease nobody renews. Once that has run out (3 s), requeue them.
    time.sleep(4.5)
    requeued = {job.id for job in router.requeue_stale(1.0).requeued}
    assert {job.id for job in jobs} <= requeued  # (lost jobs of other tests may be requeued with them)
    results = [job.wait(timeout=120) for job in jobs]
    assert all(isinstance(result, GenerateResult) for result in results)
    usage, paths = usage_and_paths(pg_url, [job.id for job in jobs])
    assert usage == [1] * IN_FLIGHT  # each job counted once
    assert paths == {"lost,succeeded"}  # the attempt cut off, then the one that finished
    assert len(fresh.calls_to("/slow/v1/completions")) == 2 * IN_FLIGHT


def test_many_threads_never_exceed_a_tiers_rate_limit(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    jobs = [
        router.generate(f"limited question {i}", tier="remote_limited", max_tokens=10) for i in range(2 * PER_MINUTE)
    ]
    _only_the_window_runs(worker, jobs, PER_MINUTE, lambda: len(fresh.calls_to("/limited/v1/completions")))


def test_many_threads_never_exceed_a_provider_keys_rate_limit_across_tiers(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    tiers = ("remote_key_a", "remote_key_b")
    jobs = [router.generate(f"keyed question {i}", tier=tiers[i % 2], max_tokens=10) for i in range(2 * KEY_PER_MINUTE)]

    def calls() -> int:
        return len(fresh.calls_to(f"/models/{KEYED_A}")) + len(fresh.calls_to(f"/models/{KEYED_B}"))

    _only_the_window_runs(worker, jobs, KEY_PER_MINUTE, calls)
    assert fresh.calls_to(f"/models/{KEYED_A}") and fresh.calls_to(f"/models/{KEYED_B}")  # both tiers shared it


def _only_the_window_runs(worker: WorkerProcess, jobs: list[Any], per_minute: int, calls: Callable[[], int]) -> None:
    """Of twice a minute's window submitted at once to 64 threads, exactly the window's calls are made; the
    others wait for it to free, each published again once (a deferral), never spinning."""
    deadline = time.monotonic() + 60
    while sum(job.status() == "succeeded" for job in jobs) < per_minute:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(2.0)  # time for any call over the limit to show
    assert calls() == per_minute
    waiting = [job for job in jobs if job.status() != "succeeded"]
    assert len(waiting) == len(jobs) - per_minute
    # Deferred until the window frees (the rest of the minute), not spinning: each holds no attempt yet.
    assert all(job.attempts() == [] for job in waiting)
    assert all(job.status() == "queued" for job in waiting)
    log = worker.log()
    assert all(log.count(f"job {job.id} deferred") == 1 for job in waiting)  # published again once each


def test_a_429_storm_does_not_turn_into_a_republish_storm(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    Storm.until = time.monotonic() + STORM_S
    jobs = [router.generate(f"stormy question {i}", tier="remote_stormy", max_tokens=10) for i in range(IN_FLIGHT)]
    for job in jobs:
        assert isinstance(job.wait(timeout=90), GenerateResult)
    log = worker.log()
    # Each message after the first is a retry published for when the Retry-After ends, or a wait for the
    # model's cooldown: a storm of 3 s with Retry-After 2 s allows two of them per job, never a spin.
    lines = log.splitlines()
    republished = [
        sum(
            f"job {job.id} " in line and ("; retry in " in line or " deferred " in line or " waits " in line)
            for line in lines
        )
        for job in jobs
    ]
    assert max(republished) <= 2, republished
    calls = fresh.calls_to("/stormy/v1/completions")
    assert len(calls) <= 3 * IN_FLIGHT
    refused = [call for call in calls if call.at < Storm.until]
    assert refused and all(job.status() == "succeeded" for job in jobs)


def test_a_worker_takes_no_more_messages_than_it_has_free_slots(
    start_worker: Callable[..., WorkerProcess], remote_env: dict[str, str], router: Router, fresh: InferenceServer
) -> None:
    options = ("--pool", "remote", "--concurrency", str(NARROW_SLOTS), "--processes", "1")
    narrow = start_worker("remote_narrow", "remote-narrow", env=remote_env, options=options)
    jobs = [router.generate(f"narrow question {i}", tier="remote_narrow", max_tokens=10) for i in range(12)]
    ids = {job.id for job in jobs}
    deadline = time.monotonic() + 30
    while len(fresh.calls_to("/narrow/v1/completions")) < NARROW_SLOTS:  # the first four calls (3 s each)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(1.0)  # well inside those calls: a worker that prefetched more would hold more by now
    held = HeldMessages(RedisTransport(redis.Redis.from_url(BROKER))).held_since(time.time())
    taken = [tag for tag, job_ids in held.items() if set(job_ids) & ids]
    assert len(taken) == NARROW_SLOTS  # one message per busy slot, handed out and unacknowledged
    assert queued(redis.Redis.from_url(BROKER), "remote_narrow") == len(jobs) - NARROW_SLOTS  # the rest wait
    assert len(fresh.calls_to("/narrow/v1/completions")) == NARROW_SLOTS
    for job in jobs:
        assert isinstance(job.wait(timeout=60), GenerateResult)
    narrow.stop()


def test_interactive_embed_jobs_waiting_together_travel_in_few_calls(
    start_worker: Callable[..., WorkerProcess], remote_env: dict[str, str], router: Router, fresh: InferenceServer
) -> None:
    """Dynamic batching in the remote pool: 40 interactive embed jobs and a generation wait in one queue when a
    worker of 4 slots starts. Each slot takes the waiting embed jobs with its own into one HTTP call of at most
    32 inputs; the generation is a call of its own, never held back in another job's slot."""
    texts = ["b" * (i + 1) for i in range(40)]
    jobs = [router.embed(sentence, tier="remote_batched", use_cache=False) for sentence in texts[:20]]
    generation = router.generate("a question among embeddings", tier="remote_batched", max_tokens=5, use_cache=False)
    jobs += [router.embed(sentence, tier="remote_batched", use_cache=False) for sentence in texts[20:]]
    options = ("--pool", "remote", "--concurrency", str(BATCHED_SLOTS), "--processes", "1")
    batched = start_worker("remote_batched", "remote-batched", env=remote_env, options=options)
    for sentence, job in zip(texts, jobs, strict=True):
        result = job.wait(timeout=60)
        assert isinstance(result, EmbedResult)
        assert result.data[0].embedding == api.vectors([sentence])[0]  # each job got its own input's vector
        assert len(job.attempts()) == 1
    assert isinstance(generation.wait(timeout=60), GenerateResult)
    sizes = [len(call.body["inputs"]) for call in fresh.calls_to("/embed")]
    assert sum(sizes) == len(texts) and max(sizes) <= PER_CALL
    # One call per job without batching; with it, at most a call per slot that found nothing more waiting,
    # plus the calls of what waited behind the generation and after the first takes.
    assert len(sizes) <= 2 * BATCHED_SLOTS, sizes
    assert len(fresh.calls_to("/v1/completions")) == 1
    batched.stop()
