"""Mistakes a newcomer makes, each answered in one line instead of failing in silence: a mistyped variable, a
fleet half set up, a database never migrated, a queue no worker serves, and a batch whose jobs were
cancelled. Through the real command line and ``Router``, on the real Redis and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.tasks.database import upgrade
from llm_router.tasks.errors import ConfigurationError, JobTimeout
from tests.conftest import PG_ADMIN, PG_URL_TEMPLATE, REPO, WorkerProcess, catalogue_env, catalogue_settings

BROKER = "redis://127.0.0.1:6379/0"
CATALOGUE = """
default_tier = "fast"
tier_order = ["fast", "balanced", "quality"]
[tiers.fast]
pool = "remote"
embed = ["echo/embed"]
generate = ["echo/generate"]
[tiers.balanced]
pool = "remote"
generate = ["echo/generate"]
[tiers.quality]
pool = "remote"
generate = ["echo/generate"]
[tiers.nobody]
pool = "remote"
embed = ["echo/embed"]
[models."echo/embed"]
provider = "echo"
task = "embed"
[models."echo/generate"]
provider = "echo"
"""


@pytest.fixture(scope="module")
def env(cluster_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {**cluster_env, **catalogue_env(tmp_path_factory.mktemp("newcomer"), CATALOGUE, BROKER)}


def _cli(
    env: dict[str, str], *arguments: str, cwd: Path = REPO, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``llm-router ARGUMENTS`` in ``cwd`` (this checkout's code wherever it runs)."""
    command = [sys.executable, "-m", "llm_router.cli.main", *arguments]
    run_env = {**env, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


# ---- variables ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("LLM_ROUTER_BROKER_ULR", "LLM_ROUTER_BROKER_URL"),  # (a typo, and the name it meant)
        ("LLM_ROUTER_DATABSE_URL", "LLM_ROUTER_DATABASE_URL"),
        ("llm_router_lease", "LLM_ROUTER_LEASE_S"),  # names are read whatever their case
    ],
)
def test_a_mistyped_variable_is_refused_naming_the_closest_setting(
    env: dict[str, str], tmp_path: Path, variable: str, closest: str
) -> None:
    laptop = {k: v for k, v in env.items() if not k.startswith("LLM_ROUTER_")}
    done = _cli({**laptop, variable: "redis://127.0.0.1:6379/0"}, "submit", "embed", "hello", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert variable.upper() in done.stderr and f"did you mean {closest}?" in done.stderr
    assert not (tmp_path / "var").exists()  # nothing went to an embedded broker in the working directory


def test_a_fleet_half_set_up_is_refused_and_dot_env_is_read(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    laptop = {k: v for k, v in env.items() if not k.startswith("LLM_ROUTER_")}
    done = _cli({**laptop, "LLM_ROUTER_BROKER_URL": BROKER}, "submit", "embed", "hello", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "LLM_ROUTER_BROKER_URL is set but LLM_ROUTER_DATABASE_URL is not" in done.stderr
    (tmp_path / ".env").write_text("LLM_ROUTER_DATABSE_URL=sqlite:///typo.db\n")  # read like the environment
    done = _cli(laptop, "submit", "embed", "hello", cwd=tmp_path)
    assert done.returncode == 2 and "LLM_ROUTER_DATABSE_URL: no such setting" in done.stderr
    for name in [name for name in os.environ if name.startswith("LLM_ROUTER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LLM_ROUTER_BROKER_ULR", BROKER)
    with pytest.raises(ConfigurationError, match="LLM_ROUTER_BROKER_ULR: no such setting; did you mean"):
        Router()


# ---- a database never migrated ----------------------------------------------------------------------------


@pytest.fixture
def bare_database() -> Iterator[str]:
    name = f"llmr_test_bare_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL_TEMPLATE.format(database=name)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_database_without_its_schema_is_named_in_one_line(env: dict[str, str], bare_database: str) -> None:
    bare = {**env, "LLM_ROUTER_DATABASE_URL": bare_database}
    for arguments in (("submit", "embed", "hello"), ("worker", "--pool", "remote", "--queues", "fast")):
        done = _cli(bare, *arguments)
        assert done.returncode == 3, done.stderr[-2000:]
        assert done.stderr.strip().count("\n") == 0 and "has no schema: run `llm-router db upgrade`" in done.stderr
    status = _cli(bare, "status", "--timeout", "0.5")
    assert status.returncode == 1 and "has no schema: run `llm-router db upgrade`" in status.stdout
    engine = create_engine(bare_database)
    upgrade(engine, "0009")  # an older schema
    engine.dispose()
    done = _cli(bare, "submit", "embed", "hello")
    assert done.returncode == 3 and "has schema revision 0009, wanted " in done.stderr, done.stderr[-2000:]
    assert _cli(bare, "db", "upgrade").returncode == 0
    assert _cli(bare, "submit", "embed", "hello").returncode == 0


# ---- a queue nobody serves ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def router(cluster_settings: Settings, env: dict[str, str]) -> Iterator[Router]:
    with Router(catalogue_settings(cluster_settings, env)) as router:
        yield router


def test_a_job_no_worker_serves_says_so_and_auto_picks_a_served_tier(
    start_worker: Callable[..., WorkerProcess], env: dict[str, str], router: Router
) -> None:
    done = _cli(env, "submit", "embed", "hello", "--tier", "nobody", "--wait", "--timeout", "2")
    assert done.returncode == 4 and "no worker serves queue nobody" in done.stderr, done.stderr
    job = router.embed("nobody takes this", tier="nobody")
    with pytest.raises(JobTimeout, match="still queued after 1 s; no worker serves queue nobody"):
        job.wait(timeout=1)
    status = json.loads(_cli(env, "status", "--json", "--timeout", "0.5").stdout)
    assert "nobody" in status["unserved_queues"]

    worker = start_worker("fast,balanced", "no-quality", env=env, options=("--pool", "remote"))
    deadline = time.monotonic() + 30
    while "balanced" not in (router.served_queues() or ()):  # what a producer knows, read every few seconds
        assert time.monotonic() < deadline, "the worker never said which queues it serves"
        time.sleep(0.5)
    long_prompt = "Explain, step by step and at length, how a message queue keeps its promises. " * 10
    routed = router.generate(long_prompt, tier="auto", max_tokens=300)  # the guide's rule says quality
    assert routed.record().tier == "balanced"  # the nearest tier a worker serves
    assert routed.wait(timeout=30).text
    worker.stop()


# ---- a batch whose jobs were cancelled ---------------------------------------------------------------------


def test_the_batch_command_ends_when_its_jobs_are_cancelled(
    env: dict[str, str], router: Router, tmp_path: Path
) -> None:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(
        "".join(json.dumps({"kind": "embed", "input": f"line {n}", "tier": "nobody"}) + "\n" for n in range(3))
    )
    batch_id = f"cancelled-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "llm_router.cli.main", "batch", str(source), "-o", str(target)]
    running = subprocess.Popen(
        [*command, "--batch-id", batch_id, "--timeout", "60"], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while len(router.store.unfinished_of_batch(batch_id)) < 3:
        assert time.monotonic() < deadline, "the batch was never submitted"
        time.sleep(0.1)
    assert len(router.cancel_batch(batch_id).cancelled) == 3
    _, errors = running.communicate(timeout=30)  # it ends now, not when its --timeout passes
    assert running.returncode == 1, errors
    statuses = [json.loads(line)["status"] for line in target.read_text().splitlines()]
    assert statuses == ["cancelled"] * 3 and "3 failed" in errors
