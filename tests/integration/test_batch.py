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

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.cli.batch import NAMESPACE
from tests.conftest import REPO, WorkerProcess, empty_redis_db

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
    command = [sys.executable, "-m", "llm_router.cli.main", "batch", *arguments]
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
    assert [(r["line"], r["id"]) for r in invalid] == [(101, None), (501, "bad-empty"), (901, None)]
    assert "line 101" in invalid[0]["error"] and "input.0" in invalid[1]["error"]
    expected_ids = [json.loads(line)["id"] for i, line in enumerate(_lines(1000, {})) if i not in bad]
    assert [r["id"] for r in results if r["status"] == "succeeded"] == expected_ids  # input order
    assert results[0]["result"]["kind"] == "generate" and results[1]["result"]["kind"] == "embed"
    assert "line 101" in done.stderr and "997 succeeded" in done.stderr
    assert "done" in done.stderr and "ETA" in done.stderr  # progress, as plain lines when not a terminal
    assert _batch_jobs(pg_url, "thousand") == (997, 997)
    progress = subprocess.run(
        [sys.executable, "-m", "llm_router.cli.main", "result", "--batch", "thousand", "--json"],
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
    command = [sys.executable, "-m", "llm_router.cli.main", "batch", str(source), "-o", str(target), "--chunk", "10"]
    first = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    batch_id = str(uuid.uuid5(NAMESPACE, str(source.resolve())))  # as the command derives it
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


def _results(target: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in target.read_text().splitlines()]


def test_a_line_whose_content_changed_is_a_new_job_never_the_old_result(
    worker: WorkerProcess, env: dict[str, str], tmp_path: Path
) -> None:
    source, target = tmp_path / "daily.jsonl", tmp_path / "daily.out"
    source.write_text(json.dumps({"kind": "classify", "input": "I love this, wonderful!"}) + "\n")
    assert _run(env, str(source), "-o", str(target)).returncode == 0
    assert _results(target)[0]["result"]["labels"][0]["label"] == "POSITIVE"
    source.write_text(json.dumps({"kind": "classify", "input": "I hate this, terrible and awful."}) + "\n")
    again = _run(env, str(source), "-o", str(target))
    assert again.returncode == 0, again.stderr
    assert _results(target)[0]["result"]["labels"][0]["label"] == "NEGATIVE"

    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps({"kind": "embed", "input": "nightly text"}) + "\n")
    second.write_text(json.dumps({"kind": "generate", "prompt": "Say hi", "max_tokens": 2}) + "\n")
    assert _run(env, str(first), "-o", str(target), "--batch-id", "nightly").returncode == 0
    assert _run(env, str(second), "-o", str(target), "--batch-id", "nightly").returncode == 0
    assert _results(target)[0]["result"]["kind"] == "generate"


def test_a_job_id_that_names_another_request_is_refused_from_python(
    worker: WorkerProcess, cluster_settings: Settings
) -> None:
    with Router(cluster_settings.model_copy(update={"broker_url": BROKER})) as router:
        job_id = str(uuid.uuid4())
        first = router.batch([{"kind": "embed", "input": "one"}], batch_id="reuse", job_ids=[job_id])
        first.jobs[0].wait(timeout=60)
        second = router.batch([{"kind": "embed", "input": "two"}], batch_id="reuse", job_ids=[job_id])
        assert second.jobs == {} and "already recorded with another request" in second.errors[0]
        mixed = router.batch([{"kind": "embed", "input": "fine"}, "not a request"])  # type: ignore[list-item]
        assert set(mixed.jobs) == {0} and "request: expected a JSON object, got str" in mixed.errors[1]


def test_two_runs_of_one_file_at_once_record_each_line_once(
    worker: WorkerProcess, env: dict[str, str], tmp_path: Path, pg_url: str
) -> None:
    source = tmp_path / "twice.jsonl"
    source.write_text("\n".join(_lines(400, {})) + "\n")
    command = [sys.executable, "-m", "llm_router.cli.main", "batch", str(source), "--chunk", "20", "-o"]
    runs = [
        subprocess.Popen(
            [*command, str(tmp_path / f"out{n}.jsonl")], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True
        )
        for n in (1, 2)
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0 and "Traceback" not in stderr, stderr
    assert _results(tmp_path / "out1.jsonl") == _results(tmp_path / "out2.jsonl")
    assert _batch_jobs(pg_url, str(uuid.uuid5(NAMESPACE, str(source.resolve())))) == (400, 400)


def test_bad_arguments_fail_before_anything_is_submitted(
    worker: WorkerProcess, env: dict[str, str], tmp_path: Path, pg_url: str
) -> None:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(_lines(5, {})) + "\n")
    batch_id = str(uuid.uuid5(NAMESPACE, str(source.resolve())))
    unwritable = _run(env, str(source), "-o", "/proc/nonexist/x.out")
    assert unwritable.returncode == 2 and "cannot write /proc/nonexist/x.out" in unwritable.stderr
    assert _batch_jobs(pg_url, batch_id) == (0, 0)
    for chunk in ("0", "-1"):
        refused = _run(env, str(source), "-o", str(target), "--chunk", chunk)
        assert refused.returncode == 2 and "--chunk" in refused.stderr and "Traceback" not in refused.stderr
    corrected = _run(env, str(source), "-o", str(target))  # the same batch, whatever -o was first
    assert corrected.returncode == 0 and f"(batch {batch_id})" in corrected.stderr


def test_line_ids_and_error_keys_never_mix(worker: WorkerProcess, env: dict[str, str], tmp_path: Path) -> None:
    source, target = tmp_path / "ids.jsonl", tmp_path / "ids.out"
    lines = [
        {"kind": "embed", "input": "line one, after a byte-order mark"},
        {"id": "zz@line2", "kind": "embed", "input": "two"},
        {"id": None, "kind": "embed", "input": "three"},
        {"id": "7", "kind": "embed", "input": "four"},
        {"id": "8@line8", "kind": "embed", "input": "five"},
        {"id": None, "kind": "embed", "input": "six"},
        {"kind": "embed", "input": "seven, no id, line 7"},
    ]
    source.write_bytes(b"\xef\xbb\xbf" + "\n".join(map(json.dumps, lines)).encode() + b"\nnot json\n")
    done = _run(env, str(source), "-o", str(target))
    assert done.returncode == 1, done.stderr  # three lines invalid
    results = _results(target)
    assert [(r["line"], r["id"], r["status"]) for r in results] == [
        (1, None, "succeeded"),
        (2, "zz@line2", "succeeded"),
        (3, None, "invalid"),
        (4, "7", "succeeded"),
        (5, "8@line8", "succeeded"),
        (6, None, "invalid"),
        (7, None, "succeeded"),  # no clash with the explicit id "7"
        (8, None, "invalid"),
    ]
    assert "id: expected a string" in results[2]["error"] and "not valid JSON" in results[7]["error"]


def test_lines_still_running_at_the_timeout_are_not_called_failed(env: dict[str, str], tmp_path: Path) -> None:
    source, target = tmp_path / "late.jsonl", tmp_path / "late.out"
    source.write_text(json.dumps({"kind": "embed", "input": "nobody serves this queue"}) + "\n")
    late = _run(
        {**env, "LLM_ROUTER_BROKER_URL": "redis://127.0.0.1:6379/3"}, str(source), "-o", str(target), "--timeout", "1"
    )
    assert late.returncode == 4, late.stderr
    assert "0 failed" in late.stderr and "1 still running" in late.stderr
    assert _results(target)[0]["status"] == "queued"
    empty_redis_db("redis://127.0.0.1:6379/3")


@pytest.mark.parametrize(
    "command", [["usage"], ["result", str(uuid.uuid4())], ["requeue", "--stale"], ["submit", "embed", "hi"]]
)
def test_an_unreachable_database_is_one_line_and_exit_3(env: dict[str, str], command: list[str]) -> None:
    down = {**env, "LLM_ROUTER_DATABASE_URL": "postgresql+psycopg://router:s3cret@127.0.0.1:1/jobs"}
    run = subprocess.run(
        [sys.executable, "-m", "llm_router.cli.main", *command],
        env=down,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert run.returncode == 3, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: the database cannot be reached")
    assert "s3cret" not in run.stderr
