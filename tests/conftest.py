"""Shared fixtures: the machine's real Postgres and Redis, the prepared models, worker subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Producer
from sqlalchemy import create_engine, text

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from ops.bench.database import bench_database
from ops.bench.faults import kill_whole
from tests.support.brokers import priority_keys
from tests.support.gateway import running_gateway

PG_ADMIN = os.environ.get("LLMR_TEST_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PG_URL_TEMPLATE = os.environ.get("LLMR_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
REDIS_TEST_URL = os.environ.get("LLMR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test's folder is its marker: ``unit`` (no services, seconds) or ``integration`` (real Redis,
    Postgres, RabbitMQ and worker subprocesses)."""
    for item in items:
        folder = item.path.parent.name
        if folder in ("unit", "integration"):
            item.add_marker(folder)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    from llm_router.workers.bundled.prepare import prepare_models

    folder = Settings().models_dir
    prepare_models(folder)
    return folder


def fresh_database() -> AbstractContextManager[str]:
    """A new Postgres database migrated to head, dropped afterwards: for tests that count every row."""
    return bench_database(PG_ADMIN, PG_URL_TEMPLATE, prefix="llmr_test")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh Postgres database for this test session."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def count_rows(pg_url: str) -> Iterator[Callable[[str], int]]:
    """The number a ``SELECT count(*) …`` of the session's database answers."""
    engine = create_engine(pg_url, pool_pre_ping=True)  # survives the reliability tests' Postgres restart

    def count(query: str) -> int:
        with engine.connect() as connection:
            return int(connection.execute(text(query)).scalar_one())

    yield count
    engine.dispose()


def queued(client: redis.Redis, queue: str) -> int:
    """Messages waiting on a Redis broker's queue, at every priority."""
    return sum(int(client.llen(key)) for key in priority_keys(queue))  # type: ignore[arg-type]


def queued_raw(client: redis.Redis, queue: str) -> list[bytes]:
    """The raw messages waiting on a Redis broker's queue, the first to be taken last."""
    return [raw for key in reversed(priority_keys(queue)) for raw in client.lrange(key, 0, -1)]  # type: ignore[union-attr]


def empty_redis_db(url: str) -> str:
    """Empty the Redis database a test module uses as its broker, and return its URL."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return empty_redis_db(REDIS_TEST_URL)


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(scope="session")
def rabbit_vhost() -> Iterator[Callable[[str], str]]:
    """The URL of a RabbitMQ virtual host of this test session, one per name (a module's own, as a module has
    its own Redis database), on the machine's broker; every one deleted afterwards."""
    made: dict[str, str] = {}

    def vhost(name: str) -> str:
        if name not in made:
            host = f"llmr_test_{name}_{uuid.uuid4().hex[:8]}"
            rabbitmqctl("add_vhost", host)
            rabbitmqctl("set_permissions", "-p", host, "guest", ".*", ".*", ".*")
            made[name] = f"amqp://guest:guest@127.0.0.1:5672/{host}"
        return made[name]

    yield vhost
    for url in made.values():
        rabbitmqctl("delete_vhost", url.rsplit("/", 1)[1])


@pytest.fixture(scope="session")
def rabbit_url(rabbit_vhost: Callable[[str], str]) -> str:
    return rabbit_vhost("session")


# The tests that run on both fleet brokers take the module's ``broker`` fixture through one of these; a module
# runs all its Redis tests, then all its RabbitMQ ones (pytest groups module-scoped parameters).
ON_BOTH_BROKERS = pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True, scope="module")
ON_REDIS = pytest.mark.parametrize("broker", ["redis"], indirect=True, scope="module")
ON_RABBITMQ = pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True, scope="module")


def second_run(broker_url: str) -> dict[str, str]:
    """Environment for a module's workers on RabbitMQ: its Redis run answered the same requests a moment ago,
    and the result cache (the same database) would answer them again; it is tested on its own elsewhere."""
    return {"LLM_ROUTER_CACHE_TTL_S": "0"} if broker_url.startswith("amqp") else {}


def producer_settings(cluster_settings: Settings, broker_url: str) -> Settings:
    """A producer of the test cluster on ``broker_url`` (with no result cache on RabbitMQ: see second_run)."""
    cache = {"cache_ttl_s": 0.0} if second_run(broker_url) else {}
    return cluster_settings.model_copy(update={"broker_url": broker_url, **cache})


def rabbit_queue_counts(url: str) -> dict[str, tuple[int, int]]:
    """(ready, unacknowledged) messages per queue of the virtual host in ``url``."""
    import json

    vhost = url.rsplit("/", 1)[1]
    out = rabbitmqctl(
        "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged", "--formatter", "json"
    )
    return {q["name"]: (int(q["messages_ready"]), int(q["messages_unacknowledged"])) for q in json.loads(out or "[]")}


@pytest.fixture(scope="session")
def cluster_env(
    pg_url: str, redis_url: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment for processes of the test cluster: real Redis broker, real Postgres records."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_ROUTER_")}
    env.update(
        LLM_ROUTER_BROKER_URL=redis_url,
        LLM_ROUTER_DATABASE_URL=pg_url,
        LLM_ROUTER_MODELS_DIR=str(models_dir),
        LLM_ROUTER_VAR_DIR=str(tmp_path_factory.mktemp("var")),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        # Off in the shared test cluster, whose one database serves workers on several brokers (a real cluster
        # has one broker): a sweeper would publish other tests' jobs on its own. The recovery tests run it on
        # a database and a broker of their own.
        LLM_ROUTER_SWEEP_INTERVAL_S="0",
    )
    return env


@pytest.fixture(scope="session")
def cluster_settings(cluster_env: dict[str, str]) -> Settings:
    return Settings(
        broker_url=cluster_env["LLM_ROUTER_BROKER_URL"],
        database_url=cluster_env["LLM_ROUTER_DATABASE_URL"],
        models_dir=Path(cluster_env["LLM_ROUTER_MODELS_DIR"]),
        var_dir=Path(cluster_env["LLM_ROUTER_VAR_DIR"]),
    )


class WorkerProcess:
    def __init__(self, process: subprocess.Popen[bytes], nodename: str, log_path: Path):
        self.process = process
        self.nodename = nodename
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill_whole(self) -> None:
        """SIGKILL the worker's main process and every process of its pool at once."""
        kill_whole(self.process)

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def start_worker(
    cluster_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start a real ``llm-router worker`` subprocess and wait until its models are loaded."""
    started: list[WorkerProcess] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def start(
        queues: str,
        name: str,
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
        options: tuple[str, ...] = (),
        wrapper: tuple[str, ...] = (),
    ) -> WorkerProcess:
        """``wrapper``: a command the worker runs under (``faketime``, ``unshare``), its arguments first."""
        nodename = f"{name}-{uuid.uuid4().hex[:6]}@localhost"
        log_path = logs / f"{name}.log"
        command = [
            *wrapper,
            sys.executable,
            "-m",
            "llm_router.cli.main",
            "worker",
            "--pool",
            "cpu",
            "--queues",
            queues,
            "--concurrency",
            "1",
            "--hostname",
            nodename,
            *options,
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, env={**cluster_env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        worker = WorkerProcess(process, nodename, log_path)
        started.append(worker)
        deadline = time.monotonic() + timeout_s
        while "ready: tiers=" not in worker.log():
            if not worker.alive():
                raise AssertionError(f"worker {name} exited early:\n{worker.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {name} not ready after {timeout_s}s:\n{worker.log()[-3000:]}")
            time.sleep(0.2)
        return worker

    yield start
    for worker in started:  # every one asked at once: each takes seconds to finish its warm shutdown
        if worker.alive():
            worker.process.terminate()
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def own_catalogue(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test module's ``CATALOGUE``, in a file: the catalogue its worker and its Router share."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "catalogue.toml"
    path.write_text(request.module.CATALOGUE)
    return path


@pytest.fixture(scope="module")
def own_router(cluster_settings: Settings, own_catalogue: Path) -> Iterator[Router]:
    """A Router of the test cluster that routes with the module's own catalogue."""
    with Router(cluster_settings.model_copy(update={"config": own_catalogue})) as router:
        yield router


@pytest.fixture(scope="module")
def gateway(
    cluster_env: dict[str, str], own_catalogue: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A gateway of the test cluster routing with the test module's own catalogue (import it into the module)."""
    env = {**cluster_env, "LLM_ROUTER_CONFIG": str(own_catalogue)}
    with running_gateway(env, tmp_path_factory.mktemp("gateway") / "gateway.log") as url:
        yield url


SENTIMENT = "llm-runner-router/minilm-sentiment"


def local_catalogue(tier: str, *, generate: bool = False, classify: str | None = None, idle: str | None = None) -> str:
    """A catalogue of one tier that embeds with the bundled MiniLM (and, with ``generate``, generates with
    the bundled SmolLM2); with ``classify``, a tier of that name classifies with the bundled sentiment model;
    with ``idle``, a tier of that name that generates, for a worker to leave unserved."""
    embed, smol = "sentence-transformers/all-MiniLM-L6-v2", "HuggingFaceTB/SmolLM2-135M-Instruct"
    order = ", ".join(f'"{name}"' for name in (tier, classify, idle) if name)
    text = f"""
default_tier = "{tier}"
tier_order = [{order}]
[tiers.{tier}]
embed = ["{embed}"]
{f'generate = ["{smol}"]' if generate else ""}
[models."{embed}"]
provider = "local"
task = "embed"
"""
    if generate or idle:
        text += f"""[models."{smol}"]
provider = "local"
task = "generate"
dtype = "bfloat16"
"""
    if classify:
        text += f"""[tiers.{classify}]
classify = ["{SENTIMENT}"]
[models."{SENTIMENT}"]
provider = "local"
task = "classify"
"""
    if idle:
        text += f"""[tiers.{idle}]
generate = ["{smol}"]
"""
    return text


def embedded_env(models_dir: Path) -> dict[str, str]:
    """Environment of a process on the embedded defaults (no LLM_ROUTER_* service set), with the prepared models."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("LLM_ROUTER_")}
    return {**env, "LLM_ROUTER_MODELS_DIR": str(models_dir), "HF_HUB_OFFLINE": "1"}


def catalogue_env(folder: Path, catalogue: str, broker: str, **variables: str) -> dict[str, str]:
    """Environment of a worker with a catalogue of its own, on a broker database of its own (emptied)."""
    config = folder / "catalogue.toml"
    config.write_text(catalogue)
    empty_redis_db(broker)
    return {"LLM_ROUTER_BROKER_URL": broker, "LLM_ROUTER_CONFIG": str(config), **variables}


def catalogue_settings(cluster_settings: Settings, env: dict[str, str]) -> Settings:
    """Settings of a producer talking to the worker that ``catalogue_env`` describes."""
    update = {"broker_url": env["LLM_ROUTER_BROKER_URL"], "config": Path(env["LLM_ROUTER_CONFIG"])}
    return cluster_settings.model_copy(update=update)


def publish_raw(broker_url: str, queue: str, body: bytes, content_type: str, task: str, task_id: str = "") -> None:
    """Publish a hand-made message straight to a queue, bypassing Celery's client."""
    task_id = task_id or str(uuid.uuid4())
    with Connection(broker_url) as connection:
        Producer(connection).publish(
            body,
            exchange=Exchange("llm-router", type="direct"),
            routing_key=queue,
            content_type=content_type,
            content_encoding="binary" if content_type != "application/json" else "utf-8",
            headers={"task": task, "id": task_id, "lang": "py", "argsrepr": "", "kwargsrepr": ""},
        )
