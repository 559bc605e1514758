"""Operations on the real services: `llm-router status` with a worker up and down, and Flower (a real
process) showing the jobs behind basic auth without their inputs or secrets."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from alembic.script import ScriptDirectory
from click.testing import CliRunner

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.cli.main import cli
from llm_router.tasks.database import alembic_config
from tests.conftest import REPO, WorkerProcess, empty_redis_db

BROKER = "redis://127.0.0.1:6379/10"
TOKEN = "hf_OPS_sentinel_token_5e4d3c2b1a"
PROMPT = "PROMPT-SENTINEL the words of a private user prompt"
FLOWER_AUTH = "ops:flower-pass-7f6e"


@pytest.fixture(scope="module")
def env(cluster_env: dict[str, str]) -> dict[str, str]:
    empty_redis_db(BROKER)
    return {**cluster_env, "LLM_ROUTER_BROKER_URL": BROKER, "HUGGINGFACE_API_KEY": TOKEN}


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], env: dict[str, str]) -> WorkerProcess:
    return start_worker("fast,balanced", "ops", env=env)


@pytest.fixture(scope="module")
def router(cluster_settings: Settings) -> Iterator[Router]:
    with Router(cluster_settings.model_copy(update={"broker_url": BROKER})) as router:
        yield router


def _status(env: dict[str, str]) -> tuple[int, dict[str, object]]:
    outcome = CliRunner().invoke(cli, ["status", "--json", "--timeout", "2"], env=env)
    return outcome.exit_code, json.loads(outcome.output)


def test_status_with_a_worker_up(worker: WorkerProcess, router: Router, env: dict[str, str]) -> None:
    router.embed("waits in the quality queue: no worker serves it here", tier="quality")
    code, report = _status(env)
    assert code == 0 and report["ok"] is True
    assert report["broker"]["ok"] and report["broker"]["queues"]["quality"] >= 1  # type: ignore[index]
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert report["database"]["ok"] and report["database"]["revision"] == head  # type: ignore[index]
    tables = report["database"]["tables"]  # type: ignore[index]
    assert set(tables) == {"jobs", "attempts", "usage", "runs", "webhooks"} and all(
        t["bytes"] > 0 for t in tables.values()
    )
    assert set(report["recovery"]) >= {"recovered", "dead_workers"}  # type: ignore[arg-type]
    info = report["workers"][worker.nodename]  # type: ignore[index]
    assert info["queues"] == ["balanced", "balanced.bulk", "fast", "fast.bulk"]
    (process,) = info["processes"]
    assert process["device"] == "cpu" and process["rss_mb"] > 100
    assert {m["model"] for m in process["models"]} == {
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "sentence-transformers/all-MiniLM-L6-v2",
        "llm-runner-router/minilm-sentiment",
    }
    assert "postgres@" in report["database"]["url"]  # type: ignore[index]
    redis.Redis.from_url(BROKER).delete("quality")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def flower(worker: WorkerProcess, env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = tmp_path / "flower.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "llm_router.cli.main", "flower", "--port", str(port)],
            env={**env, "FLOWER_BASIC_AUTH": FLOWER_AUTH},
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"flower did not start: {log.read_text()}") from None
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=20)


def test_flower_shows_jobs_behind_basic_auth_without_inputs(flower: str, worker: WorkerProcess, router: Router) -> None:
    user, password = FLOWER_AUTH.split(":")
    auth = httpx.BasicAuth(user, password)
    deadline = time.monotonic() + 30
    # Flower must be listening to the workers' events before the jobs run, or it misses their start.
    while (
        worker.nodename
        not in httpx.get(f"{flower}/api/workers", auth=auth, params={"refresh": "true"}, timeout=10).json()
    ):
        assert time.monotonic() < deadline, "Flower never saw the worker"
        time.sleep(0.5)
    jobs = [router.generate(PROMPT, tier="fast", max_tokens=5), router.embed(PROMPT, tier="balanced")]
    for job in jobs:
        job.wait(timeout=60)
    while True:
        tasks = httpx.get(f"{flower}/api/tasks", auth=auth, timeout=5).json()
        mine = [tasks.get(job.id) or {} for job in jobs]  # the Celery task id is the job id
        if all(task.get("state") == "SUCCESS" and task.get("name") for task in mine):
            break
        assert time.monotonic() < deadline, f"Flower never showed the jobs: {tasks}"
        time.sleep(0.5)
    assert [task["args"] for task in mine] == [f"['{job.id}']" for job in jobs]
    names = {t["name"] for t in tasks.values()}
    assert {"llm_router.generate", "llm_router.embed"} <= names
    assert all(t.get("runtime") is not None for t in tasks.values() if t["state"] == "SUCCESS")
    dump = json.dumps(tasks)
    assert "PROMPT-SENTINEL" not in dump and TOKEN not in dump  # the message is the job id only

    workers = httpx.get(f"{flower}/api/workers", auth=auth, timeout=10).json()
    assert TOKEN not in json.dumps(workers)
    metrics = httpx.get(f"{flower}/metrics", timeout=5).text
    assert "flower_events_total" in metrics and 'task="llm_router.generate"' in metrics

    refused = httpx.get(f"{flower}/api/tasks", timeout=5)
    assert refused.status_code == 401
    wrong = base64.b64encode(b"ops:wrong").decode()
    assert httpx.get(f"{flower}/api/workers", headers={"Authorization": f"Basic {wrong}"}, timeout=5).status_code == 401


def test_flower_refuses_to_start_without_auth_unless_insecure(env: dict[str, str]) -> None:
    clean = {k: v for k, v in env.items() if "FLOWER" not in k}
    refused = subprocess.run(
        [sys.executable, "-m", "llm_router.cli.main", "flower", "--port", str(_free_port())],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert refused.returncode == 2 and "FLOWER_BASIC_AUTH" in refused.stderr
    insecure = subprocess.Popen(
        [sys.executable, "-m", "llm_router.cli.main", "flower", "--port", str(_free_port()), "--insecure"],
        env=clean,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    first_line = insecure.stderr.readline()  # type: ignore[union-attr]  # stderr=PIPE
    insecure.terminate()
    insecure.communicate(timeout=20)  # reaps the process and closes the pipe
    assert "WITHOUT authentication" in first_line


def test_status_with_the_worker_down(worker: WorkerProcess, env: dict[str, str]) -> None:
    worker.stop()
    code, report = _status(env)
    assert code == 1 and report["ok"] is False and report["workers"] == {}
    assert report["broker"]["ok"] and report["database"]["ok"]  # type: ignore[index]
    down = {**env, "LLM_ROUTER_DATABASE_URL": "postgresql+psycopg://postgres:db-secret-pw@127.0.0.1:1/none"}
    code, report = _status(down)
    assert code == 1 and report["database"]["ok"] is False  # type: ignore[index]
    assert "db-secret-pw" not in json.dumps(report)


def test_env_example_and_secrets_are_not_committed() -> None:
    assert (REPO / ".env.example").is_file()
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True).stdout.split()
    assert ".env" not in tracked
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO, check=False)
    assert ignored.returncode == 0  # git itself ignores a .env written at the root
