"""`llm-router batch` and `Router.batch` on the real services: results in input order, bad lines reported
and the rest done, and an interrupted run resumed without a duplicate record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from broker.cli.batch import NAMESPACE
from broker.client import Router
from broker.settings import Settings
from tests.conftest import REPO, WorkerProcess, empty_redis_db

pytestmark = pytest.mark.integration

BROKER = "redis://127.0.0.1:6379/7"


@pytest.fixture(scope="module")
def env(cluster_env: dict[str, str]) -> dict[str, str]:
    empty_redis_db(BROKER)
    return {**cluster_env, "LLM_ROUTER_BROKER_URL": BROKER}


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], env: dict[str, str]) -> WorkerProcess:
    return start_worker("fast,balanced,quality", "batch", env=env)


def _lines(count: int, bad: dict[int, str]) -> list[str]:
    lines = []
    for i in range(count):
        if i in bad:
            lines.append(bad[i])
        elif i % 10 == 0:
            lines.append(json.dumps({"id": f"g{i}", "kind": "generate", "prompt": f"Line {i} says", "max_tokens": 1}))
        elif i % 2:
            lines.append(json.dumps({"id": f"e{i}", "kind": "embed", "input": f"sentence number {i}"}))
        else:
            lines.append(json.dumps({"id": f"c{i}", "kind": "classify", "input": f"I love line {i}"}))
    return lines


def _run(env: dict[str, str], *arguments: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "broker.cli.main", "batch", *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _batch_jobs(pg_url: str, batch_id: str) -> tuple[int, int]:
    engine = create_engine(pg_url)
    with engine.connect() as connection:
        total, distinct = connection.execute(
            text("SELECT count(*), count(DISTINCT id) FROM jobs WHERE batch_id = :b"), {"b": batch_id}
        ).one()
    engine.dispose()
    return int(total), int(distinct)


def test_a_thousand_lines_with_three_bad_ones(
    worker: WorkerProcess, env: dict[str, str], tmp_path: Path, pg_url: str
) -> None:
    bad = {100: "{not json", 500: json.dumps({"id": "bad-empty", "kind": "embed", "input": ""}), 900: "[1, 2, 3]"}
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(_lines(1000, bad)) + "\n")
    done = _run(env, str(source), "-o", str(target), "--batch-id", "thousand")
    assert done.returncode == 1, done.stderr  # some lines failed: non-zero, and nothing dropped
    results = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(results) == 1000
    assert [r["status"] for r in results].count("succeeded") == 997
    invalid = [r for r in results if r["status"] == "invalid"]
    assert [r["id"] for r in invalid] == ["101", "bad-empty", "901"]
    assert "line 101" in invalid[0]["error"] and "input.0" in invalid[1]["error"]
    expected_ids = [json.loads(line)["id"] for i, line in enumerate(_lines(1000, {})) if i not in bad]
    assert [r["id"] for r in results if r["status"] == "succeeded"] == expected_ids  # input order
    assert results[0]["result"]["kind"] == "generate" and results[1]["result"]["kind"] == "embed"
    assert "line 101" in done.stderr and "997 succeeded" in done.stderr
    assert "done" in done.stderr and "ETA" in done.stderr  # progress, as plain lines when not a terminal
    assert _batch_jobs(pg_url, "thousand") == (997, 997)
    progress = subprocess.run(
        [sys.executable, "-m", "broker.cli.main", "result", "--batch", "thousand", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert json.loads(progress.stdout) == {"batch_id": "thousand", "jobs": 997, "by_status": {"succeeded": 997}}


def test_an_interrupted_batch_resumes_without_duplicates(
    worker: WorkerProcess, env: dict[str, str], tmp_path: Path, pg_url: str
) -> None:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(_lines(300, {})) + "\n")
    command = [sys.executable, "-m", "broker.cli.main", "batch", str(source), "-o", str(target), "--chunk", "10"]
    first = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    batch_id = str(uuid.uuid5(NAMESPACE, f"{source.resolve()}\n{target.resolve()}"))  # as the command derives it
    deadline = time.monotonic() + 60
    while _batch_jobs(pg_url, batch_id)[0] < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGKILL)  # halfway through the submission
    first.wait()
    recorded_before = _batch_jobs(pg_url, batch_id)[0]
    assert 60 <= recorded_before < 300 and not target.exists()

    again = _run(env, str(source), "-o", str(target))
    assert again.returncode == 0, again.stderr
    results = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(results) == 300 and all(r["status"] == "succeeded" for r in results)
    assert f"(batch {batch_id})" in again.stderr
    assert _batch_jobs(pg_url, batch_id) == (300, 300)  # every line recorded exactly once


def test_router_batch_from_python(worker: WorkerProcess, cluster_settings: Settings) -> None:
    with Router(cluster_settings.model_copy(update={"broker_url": BROKER})) as router:
        submitted = router.batch(
            [
                {"kind": "embed", "input": "one"},
                {"kind": "embed", "input": ""},
                {"kind": "classify", "input": "I love it"},
            ]
        )
        assert set(submitted.jobs) == {0, 2} and "input.0" in submitted.errors[1] and submitted.inserted == 2
        for job in submitted.jobs.values():
            job.wait(timeout=60)
        assert router.batch_progress(submitted.batch_id) == {"succeeded": 2}
        result: Any = submitted.jobs[2].result()
        assert result.labels[0].label == "POSITIVE"
