"""Nothing waits for an operator: the workers' sweeper publishes again the jobs that a dead worker or a lost
message left behind. On a database and a broker of their own, with the default lease and sweep interval."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from click.testing import CliRunner
from kombu import Exchange, Queue
from sqlalchemy import text

from llm_router.broker.celery_app import create_app
from llm_router.broker.client import Router
from llm_router.broker.publishing import send_job
from llm_router.broker.queues import TASK_NAMES
from llm_router.broker.settings import Settings
from llm_router.broker.transports.redis import UNACKED_KEY, RedisTransport
from llm_router.cli.main import cli
from llm_router.tasks.database import make_engine
from llm_router.tasks.records import AttemptStatus, JobStatus
from llm_router.tasks.schemas import GenerateResult
from llm_router.tasks.store import JobStore, JobView, Lease
from llm_router.workers.broker_mark import EPOCH_KEY, BrokerMark
from llm_router.workers.held_messages import HeldMessages
from llm_router.workers.sweeper import DEAD_WORKERS_KEY, LOCK_KEY, RECOVERED_KEY, Sweeper
from tests.conftest import WorkerProcess, catalogue_env, catalogue_settings, fresh_database
from tests.support import inference_server as api
from tests.support.inference_server import InferenceServer
from tests.support.store import start_one, submit_one

# A broker database no other test module uses: kombu pools connections per URL for the whole process, and a
# module that used a URL before the Redis restart test leaves stale connections to the next module using it.
BROKER = "redis://127.0.0.1:6379/1"
SWEEPER_REDIS = "redis://127.0.0.1:6379/15"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SLOW_S = 8.0
IN_FLIGHT = 50
RECOVERY_LIMIT_S = 120.0


def _catalogue(url: str) -> str:
    return f"""
default_tier = "recover_remote"
tier_order = ["recover_remote", "recover_local"]
[tiers.recover_remote]
pool = "remote"
generate = ["org/slow-generation"]
[tiers.recover_local]
generate = ["{SMOL}"]
[models."org/slow-generation"]
provider = "openai"
base_url = "{url}"
[models."{SMOL}"]
dtype = "bfloat16"
"""


@pytest.fixture(scope="module")
def server() -> Iterator[InferenceServer]:
    server = InferenceServer().start()
    server.on("/v1/completions", lambda body: dataclasses.replace(api.openai_completion(body), delay_s=SLOW_S))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def env(server: InferenceServer, database: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # The sweeper at its defaults (a sweep every 10 s, leases of 30 s), on this module's database only.
    return catalogue_env(
        tmp_path_factory.mktemp("recovery"),
        _catalogue(server.url),
        BROKER,
        LLM_ROUTER_DATABASE_URL=database,
        LLM_ROUTER_SWEEP_INTERVAL_S="10",
    )


@pytest.fixture(scope="module")
def router(cluster_settings: Settings, env: dict[str, str], database: str) -> Iterator[Router]:
    settings = catalogue_settings(cluster_settings, env).model_copy(update={"database_url": database})
    with Router(settings) as router:
        yield router


def _usage_rows(database: str, job_ids: list[str]) -> dict[str, int]:
    engine = make_engine(database)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT job_id, count(*) FROM usage WHERE job_id = ANY(:ids) GROUP BY job_id"), {"ids": job_ids}
        )
        counts = {job_id: int(count) for job_id, count in rows}
    engine.dispose()
    return counts


def _restore_unacknowledged(broker: str) -> int:
    """Hand the unacknowledged messages back to their queues, as Redis's visibility timeout does hours later."""
    client = redis.Redis.from_url(broker)
    restored = 0
    for tag, entry in client.hgetall("unacked").items():
        payload, _exchange, routing_key = json.loads(entry)
        client.lpush(routing_key, json.dumps(payload))
        client.hdel("unacked", tag)
        client.zrem("unacked_index", tag)
        restored += 1
    return restored


def test_a_job_whose_worker_is_killed_whole_mid_generation_succeeds_with_no_command(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router, database: str
) -> None:
    doomed = start_worker("recover_local", "recover-doomed", env=env)
    job = router.generate("Tell a long story about a sea voyage.", tier="recover_local", max_tokens=160)
    deadline = time.monotonic() + 60
    while job.status() != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)
    time.sleep(1.0)  # mid-generation
    doomed.kill_whole()
    killed_at = time.monotonic()
    survivor = start_worker("recover_local", "recover-survivor", env=env)

    result = job.wait(timeout=RECOVERY_LIMIT_S)
    assert isinstance(result, GenerateResult)
    assert time.monotonic() - killed_at < RECOVERY_LIMIT_S
    assert [attempt.status for attempt in job.attempts()] == [AttemptStatus.LOST, AttemptStatus.SUCCEEDED]
    assert _usage_rows(database, [job.id]) == {job.id: 1}

    # The message the dead worker held comes back one day (Redis's visibility timeout): it changes nothing.
    assert _restore_unacknowledged(BROKER) >= 1
    deadline = time.monotonic() + 60
    while f"job {job.id} is already succeeded; redelivery ignored" not in survivor.log():
        assert time.monotonic() < deadline, "the restored message was never delivered"
        time.sleep(0.2)
    assert job.record().status == JobStatus.SUCCEEDED and _usage_rows(database, [job.id]) == {job.id: 1}
    survivor.stop()


def test_fifty_jobs_in_flight_on_a_worker_killed_whole_all_succeed_once(
    start_worker: Callable[..., WorkerProcess],
    env: dict[str, str],
    router: Router,
    database: str,
    server: InferenceServer,
) -> None:
    options = ("--pool", "remote", "--concurrency", str(IN_FLIGHT // 2), "--processes", "1")
    doomed = start_worker("recover_remote", "recover-remote-doomed", env=env, options=options)
    survivor = start_worker("recover_remote", "recover-remote-survivor", env=env, options=options)
    server.reset()
    jobs = [router.generate(f"question {i}", tier="recover_remote", max_tokens=10) for i in range(IN_FLIGHT)]
    deadline = time.monotonic() + 30
    while len(server.calls_to("/v1/completions")) < IN_FLIGHT:  # every job's call is under way
        assert time.monotonic() < deadline, f"{len(server.calls_to('/v1/completions'))} calls in flight"
        time.sleep(0.1)
    doomed_pid = doomed.process.pid
    doomed.kill_whole()
    killed_at = time.monotonic()

    for job in jobs:
        assert isinstance(job.wait(timeout=max(1.0, RECOVERY_LIMIT_S - (time.monotonic() - killed_at))), GenerateResult)
    ids = [job.id for job in jobs]
    assert _usage_rows(database, ids) == dict.fromkeys(ids, 1)
    recovered = [
        job for job in jobs if [a.status for a in job.attempts()] == [AttemptStatus.LOST, AttemptStatus.SUCCEEDED]
    ]
    others = [job for job in jobs if [a.status for a in job.attempts()] == [AttemptStatus.SUCCEEDED]]
    assert recovered and len(recovered) + len(others) == IN_FLIGHT
    assert len(server.calls_to("/v1/completions")) == IN_FLIGHT + len(recovered)  # each cut-off call once more

    status = CliRunner().invoke(cli, ["status", "--json"], env={**env, "LLM_ROUTER_DATABASE_URL": database})
    report = json.loads(status.output)["recovery"]
    assert any(owner.endswith(f":{doomed_pid}") for owner in report["dead_workers"])
    assert {job.id for job in recovered} <= {entry["job"] for entry in report["recovered"]}
    survivor.stop()


# ---- the sweeper's decisions, one sweep at a time ------------------------------------------------------


@pytest.fixture
def store(database: str) -> Iterator[JobStore]:
    store = JobStore(make_engine(database))
    yield store
    store.engine.dispose()


@pytest.fixture
def shared() -> redis.Redis:
    client = redis.Redis.from_url(SWEEPER_REDIS)
    client.delete(LOCK_KEY, RECOVERED_KEY, DEAD_WORKERS_KEY)  # its broker mark stays: the broker lost nothing
    return client


def _job(store: JobStore, queue: str = "sweep-test") -> str:
    job_id = str(uuid.uuid4())
    submit_one(store, job_id=job_id, kind="generate", request={"prompt": "hi"}, tier="sweep", queue=queue)
    return job_id


def _start(store: JobStore, job_id: str, owner: str, lease_s: float) -> None:
    lease = Lease(owner=owner, seconds=lease_s, alive=lambda _: True)
    start_one(store, job_id, model="m", provider="openai", tier="sweep", worker=owner, lease=lease)


def _sweeper(
    store: JobStore,
    client: redis.Redis,
    published: list[tuple[str, float]],
    held: HeldMessages | None = None,
    queues: list[str] | None = None,
) -> Sweeper:
    def publish(job: JobView, queue: str, countdown: float) -> None:
        assert queue == "sweep-test"
        published.append((job.id, countdown))

    return Sweeper(
        store,
        client,
        publish,
        lambda job: job.queue if job.queue == "sweep-test" else None,  # this test's jobs only
        interval_s=10,
        lost_message_after_s=1800,
        broker_mark=BrokerMark(client, store),
        held=held,
        held_after_s=30,
        queues=queues,
    )


def test_a_sweep_recovers_dead_workers_and_lost_messages_and_leaves_the_rest(
    store: JobStore, shared: redis.Redis
) -> None:
    abandoned, alive, deferred, fresh, lost = (_job(store) for _ in range(5))
    _start(store, abandoned, "elsewhere:1", lease_s=0.001)  # its worker stopped renewing
    _start(store, alive, "elsewhere:2", lease_s=60)
    store.defer([deferred], 600)  # a rate-limit deferral of ten minutes
    store.defer([lost], -3600)  # due an hour ago: its message was lost
    time.sleep(0.01)
    published: list[tuple[str, float]] = []
    sweeper = _sweeper(store, shared, published)

    sweep = sweeper.sweep()
    assert sorted(published) == sorted([(abandoned, 0.0), (lost, 0.0)])
    assert not sweep.broker_lost_data
    assert [a.status for a in store.attempts(abandoned)] == [AttemptStatus.LOST]
    assert store.status(abandoned) == JobStatus.QUEUED and store.status(alive) == JobStatus.RUNNING
    assert shared.hget(DEAD_WORKERS_KEY, "elsewhere:1") is not None

    published.clear()
    assert sweeper.sweep().count == 0 and published == []  # published once: their messages are due now

    shared.delete(EPOCH_KEY)  # the broker's Redis restarted without persistence: every message is gone
    sweep = sweeper.sweep()
    assert sweep.broker_lost_data
    by_job = dict(published)
    assert set(by_job) == {abandoned, deferred, fresh, lost}  # every waiting job; not the one running
    assert 590 < by_job[deferred] <= 600  # a deferral keeps its countdown: it is never run early
    assert by_job[fresh] == by_job[lost] == by_job[abandoned] == 0.0


def test_a_broker_loss_is_recovered_by_the_next_sweep_whoever_sweeps_and_however_the_last_ended(
    store: JobStore, shared: redis.Redis
) -> None:
    waiting = _job(store)
    published: list[tuple[str, float]] = []
    old = _sweeper(store, shared, published)  # a worker alive before the loss
    assert not old.sweep().broker_lost_data
    shared.delete(EPOCH_KEY)  # the broker's Redis restarted without persistence
    late = _sweeper(store, shared, published)  # a worker started after the loss, before any sweep

    def refused(job: JobView, queue: str, countdown: float) -> None:
        raise ConnectionError("the broker is not back yet")

    old.publish = refused  # the old worker sweeps first, and fails while publishing
    with pytest.raises(ConnectionError):
        old.sweep()
    sweep = late.sweep()  # the loss is still known: the database kept the mark the last recovery saw
    assert sweep.broker_lost_data and waiting in {job_id for job_id, _ in published}
    published.clear()
    old.publish = late.publish
    assert not old.sweep().broker_lost_data and not late.sweep().broker_lost_data  # recovered once, for all
    assert waiting not in {job_id for job_id, _ in published}


def test_one_sweeper_at_a_time_and_another_takes_over_when_it_dies(store: JobStore, shared: redis.Redis) -> None:
    first, second = _sweeper(store, shared, []), _sweeper(store, shared, [])
    assert first.take_turn() and not second.take_turn()
    assert first.take_turn()  # it keeps its turn while it lives
    shared.pexpire(LOCK_KEY, 1)  # it died: its lock runs out
    time.sleep(0.01)
    assert second.take_turn() and not first.take_turn()


def test_requeue_of_an_abandoned_job_leaves_a_job_that_a_worker_took_over(store: JobStore) -> None:
    job_id = _job(store)
    _start(store, job_id, "elsewhere:3", lease_s=0.001)
    time.sleep(0.01)
    _start(store, job_id, "here:4", lease_s=60)  # its redelivered message was taken meanwhile
    assert not store.recover(job_id)
    assert store.status(job_id) == JobStatus.RUNNING
    assert job_id not in {job.id for job in store.stale(datetime.now(UTC))}


def test_a_long_sweep_goes_by_pages_and_publishes_each_job_once(
    store: JobStore, shared: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("llm_router.workers.sweeper.SWEEP_PAGE", 2)
    published: list[tuple[str, float]] = []
    sweeper = _sweeper(store, shared, published)
    waiting = [_job(store) for _ in range(5)]
    shared.delete(EPOCH_KEY)  # the broker lost every message: all five are due again, two a page
    assert sweeper.take_turn()
    sweep = sweeper.sweep()
    ids = [job_id for job_id, _ in published]
    # Every waiting job of this database (earlier tests' too) once, across several pages; these five among them.
    assert sweep.broker_lost_data and len(ids) == len(set(ids)) >= 5 and set(waiting) <= set(ids)
    assert shared.get(LOCK_KEY) == sweeper._token  # renewed between pages, never handed over


# A consumer that takes messages unacknowledged, as a worker's dynamic batching does, and is killed whole
# before it starts their jobs: kombu leaves them in its `unacked` hash until the visibility timeout.
TAKE_AND_DIE = """
import os, signal, sys
from kombu import Connection, Exchange, Queue
url, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
taken = []
with Connection(url, transport_options={"priority_steps": list(range(10))}) as connection:
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with connection.Consumer(queue, callbacks=[lambda body, message: taken.append(message)], accept=["json"]) as c:
        c.qos(prefetch_count=count)
        print("ready", flush=True)
        while len(taken) < count:
            connection.drain_events(timeout=30)
        print("taken", len(taken), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_jobs_whose_messages_a_dead_worker_took_and_never_started_are_published_again(
    store: JobStore, shared: redis.Redis, router: Router
) -> None:
    single, first, second, running, deferred = (_job(store) for _ in range(5))
    with subprocess.Popen(
        [sys.executable, "-c", TAKE_AND_DIE, BROKER, "sweep-test", "4"], stdout=subprocess.PIPE, text=True
    ) as consumer:
        try:
            assert consumer.stdout is not None and consumer.stdout.readline().strip() == "ready"
            app = create_app(router.settings)
            app.amqp.queues.add(Queue("sweep-test", Exchange("sweep-test", type="direct"), routing_key="sweep-test"))
            for job_id in (single, running, deferred):
                send_job(app, job_id, "generate", "sweep-test", 1)
            app.send_task(  # a bulk message of two jobs, as Router.batch sends it
                TASK_NAMES["generate"],
                kwargs={"job_ids": [first, second]},
                task_id=f"{first}+1",
                queue="sweep-test",
                routing_key="sweep-test",
            )
            assert consumer.wait(timeout=60) == -signal.SIGKILL
        finally:
            consumer.kill()
    broker = redis.Redis.from_url(BROKER)
    held = HeldMessages(RedisTransport(broker))
    ours = {single, first, second, running, deferred}
    assert {i for ids in held.held_since(time.time()).values() for i in ids} >= ours  # all four messages held
    _start(store, running, "elsewhere:5", lease_s=60)  # taken over meanwhile by a live worker
    store.defer([deferred], 600)  # a deferral of ten minutes: its message is not due yet

    published: list[tuple[str, float]] = []
    sweeper = _sweeper(store, shared, published, held)
    sweeper.sweep()
    assert not {job_id for job_id, _ in published} & ours  # handed out just now: a live worker may start them

    later = datetime.now(UTC) + timedelta(seconds=40)
    sweep = sweeper.sweep(now=later)
    assert sorted(job_id for job_id, _ in published if job_id in ours) == sorted([single, first, second])
    assert {job.id for job in sweep.stranded} == {single, first, second}
    assert all(countdown == 0.0 for job_id, countdown in published if job_id in ours)
    still_held = {i for ids in held.held_since(time.time()).values() for i in ids}
    assert not {single, first, second} & still_held and {running, deferred} <= still_held  # copies dropped
    assert shared.lrange(RECOVERED_KEY, 0, -1)  # listed by `llm-router status`

    published.clear()
    sweeper.sweep(now=later)
    assert not {job_id for job_id, _ in published} & ours  # once: their held copies are gone
    for tag, ids in held.held_since(time.time()).items():  # leave no held message behind for other tests
        if set(ids) & ours:
            broker.hdel(UNACKED_KEY, tag)


def test_a_recovery_cut_short_goes_on_from_its_last_page(
    store: JobStore, shared: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("llm_router.workers.sweeper.SWEEP_PAGE", 2)
    mine = {_job(store) for _ in range(5)}
    first_calls: list[tuple[str, float]] = []
    first = _sweeper(store, shared, first_calls)

    def dies_on_the_third(job: JobView, queue: str, countdown: float) -> None:
        if len(first_calls) == 2:
            raise ConnectionError("the sweeper's worker was killed")
        first_calls.append((job.id, countdown))

    first.publish = dies_on_the_third
    shared.delete(EPOCH_KEY)  # the broker lost every message
    assert first.take_turn()
    with pytest.raises(ConnectionError):
        first.sweep()
    first_page = {job_id for job_id, _ in first_calls}
    assert len(first_page) == 2

    shared.delete(LOCK_KEY)  # its lock ran out
    published: list[tuple[str, float]] = []
    second = _sweeper(store, shared, published)
    assert second.take_turn()
    sweep = second.sweep()
    ids = [job_id for job_id, _ in published]
    assert sweep.broker_lost_data and len(ids) == len(set(ids))
    assert not first_page & set(ids)  # the page the first one finished is not published again
    assert mine - first_page <= set(ids)  # and every other waiting job is
    assert not second.sweep().broker_lost_data  # recovered: the next sweep finds no loss


def test_a_job_whose_message_is_on_no_queue_and_held_by_no_worker_is_published_again(
    store: JobStore, shared: redis.Redis
) -> None:
    """A worker killed between taking a message off its queue and recording it unacknowledged leaves no copy:
    once its queue has drained, the job is published again; behind a backlog it waits its turn."""
    vanished = _job(store)
    store.defer([vanished], -120)  # its message was due two minutes ago
    published: list[tuple[str, float]] = []
    sweeper = _sweeper(store, shared, published, HeldMessages(RedisTransport(shared)), ["sweep-test"])
    shared.lpush("sweep-test", b"a message of another job")  # a backlog: its message may be in it
    try:
        sweeper.sweep()
        assert vanished not in {job_id for job_id, _ in published}
    finally:
        shared.delete("sweep-test")
    sweep = sweeper.sweep()  # the queue drained, and no worker holds it: it is nowhere
    assert (vanished, 0.0) in published and vanished in {job.id for job in sweep.vanished}
    published.clear()
    sweeper.sweep()
    assert vanished not in {job_id for job_id, _ in published}  # once: it is due now
