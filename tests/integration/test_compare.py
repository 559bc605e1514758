"""`Router.compare` and `llm-router compare` on a real worker: one job per model, published together, each
recorded; a missing model is a row with its error; the guide's summary checked against the rows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llm_router.broker.client import Router
from llm_router.tasks.errors import InvalidRequest
from tests.conftest import REPO, WorkerProcess

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ECHO = "acme/echo"  # answers at once with the prompt
MISSING = "acme/not-downloaded"  # in the catalogue, but no worker has its files
CATALOGUE = f"""
default_tier = "compared"
tier_order = ["compared"]
[tiers.compared]
generate = ["{SMOL}", "{ECHO}", "{MISSING}"]
embed = ["sentence-transformers/all-MiniLM-L6-v2"]
[models."{SMOL}"]
provider = "local"
dtype = "bfloat16"
[models."{ECHO}"]
provider = "echo"
[models."{MISSING}"]
provider = "local"
"""


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], own_catalogue: Path) -> WorkerProcess:
    # No cooldown: the missing model fails in every test at once, instead of waiting out the one its first
    # failure started (a comparison on a model known to fail waits like any job on it).
    env = {"LLM_ROUTER_CONFIG": str(own_catalogue), "LLM_ROUTER_COOLDOWN_S": "0"}
    return start_worker("compared", "compared", env=env)


def test_three_models_two_answer_and_the_missing_one_is_a_row_with_its_error(
    worker: WorkerProcess, own_router: Router, count_rows: Callable[[str], int]
) -> None:
    comparison = own_router.compare([SMOL, ECHO, MISSING], "Name a colour.", max_tokens=8, timeout=120)
    assert not comparison.timed_out
    by_model = {row.model: row for row in comparison.rows}
    assert by_model[SMOL].status == by_model[ECHO].status == "succeeded"
    assert by_model[ECHO].text == "Name a colour."
    assert by_model[MISSING].status == "failed"
    assert MISSING in (by_model[MISSING].error or "")
    for row in (by_model[SMOL], by_model[ECHO]):
        assert row.latency_ms is not None and row.queue_ms is not None and row.model_ms is not None
        assert 0 <= row.queue_ms <= row.latency_ms and 0 < row.model_ms <= row.latency_ms
        assert row.tokens and row.tokens > 0
    # The guide's summary, from the rows.
    done = [by_model[SMOL], by_model[ECHO]]
    summary = comparison.summary
    assert (summary.successful, summary.failed, summary.late) == (2, 1, 0)
    assert summary.avg_latency_ms == round(sum(r.latency_ms or 0 for r in done) / 2)
    assert summary.avg_tokens == round(sum(r.tokens or 0 for r in done) / 2)
    assert summary.fastest == min(done, key=lambda r: r.latency_ms or 0).model
    assert summary.longest_response == max(done, key=lambda r: len(r.text or "")).model
    assert [row.model for row in comparison.rows][:2] == sorted([SMOL, ECHO], key=lambda m: by_model[m].latency_ms or 0)
    assert comparison.rows[-1].model == MISSING
    # Each model's job is a record of its own, under the run; the run holds the figures.
    run = own_router.store.get_run(comparison.run_id)
    assert run is not None and run.kind == "compare" and run.status == "succeeded"
    assert run.models == [SMOL, ECHO, MISSING]
    assert run.summary is not None and run.summary["summary"]["successful"] == 2
    jobs = own_router.store.run_jobs(comparison.run_id)
    assert sorted(job.requested_model or "" for job in jobs) == sorted([SMOL, ECHO, MISSING])
    assert {job.id for job in jobs} == {row.job_id for row in comparison.rows}
    usage = count_rows(f"SELECT count(*) FROM usage u JOIN jobs j ON j.id = u.job_id WHERE j.batch_id = '{run.id}'")
    assert usage == 2  # the successful jobs, counted by `llm-router usage` like any others


def test_a_model_the_catalogue_does_not_know_is_a_row_not_a_job(worker: WorkerProcess, own_router: Router) -> None:
    comparison = own_router.compare([ECHO, "acme/unknown"], "ping", timeout=60)
    unknown = next(row for row in comparison.rows if row.model == "acme/unknown")
    assert unknown.status == "not_submitted" and unknown.job_id is None
    assert "unknown model 'acme/unknown'" in (unknown.error or "")
    assert comparison.summary.successful == 1 and comparison.summary.failed == 1
    assert len(own_router.store.run_jobs(comparison.run_id)) == 1


def test_a_comparison_that_outlasts_its_timeout_reports_late_rows(own_router: Router) -> None:
    comparison = own_router.compare([SMOL], "Say hello.", max_tokens=8, timeout=0.0)
    assert comparison.timed_out
    assert comparison.rows[0].status == "late" and comparison.summary.late == 1
    run = own_router.store.get_run(comparison.run_id)
    assert run is not None and run.status == "timed_out"


@pytest.mark.parametrize(
    ("models", "options", "named"),
    [
        ([], {}, "models: give at least one model"),
        ([f"org/m{i}" for i in range(1000)], {}, "models: at most 32 models at once (got 1000)"),
        ([ECHO, ECHO], {}, "named more than once"),
        ([ECHO], {"max_tokens": 0}, "max_tokens"),  # the request is bad for every model
        ([ECHO], {"temperature": 9.0}, "temperature"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_recorded(
    own_router: Router, count_rows: Callable[[str], int], models: list[str], options: dict[str, Any], named: str
) -> None:
    before = (count_rows("SELECT count(*) FROM runs"), count_rows("SELECT count(*) FROM jobs"))
    with pytest.raises(InvalidRequest, match=re.escape(named)):
        own_router.compare(models, "hello", **options)
    assert (count_rows("SELECT count(*) FROM runs"), count_rows("SELECT count(*) FROM jobs")) == before


def test_the_command_prints_the_table_and_json(
    worker: WorkerProcess, cluster_env: dict[str, str], own_catalogue: Path
) -> None:
    env = {**cluster_env, "LLM_ROUTER_CONFIG": str(own_catalogue)}
    command = [
        sys.executable,
        "-m",
        "llm_router.cli.main",
        "compare",
        "--models",
        f"{ECHO},{MISSING}",
        "--prompt",
        "hi",
    ]
    shown = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert shown.returncode == 1, shown.stderr  # a model failed
    header = shown.stdout.splitlines()[0]
    assert header.startswith("model") and "queue ms" in header and "model ms" in header
    assert "1 successful, 1 failed" in shown.stdout and f"fastest: {ECHO}" in shown.stdout
    as_json = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    report = json.loads(as_json.stdout)
    assert [row["status"] for row in report["rows"]] == ["succeeded", "failed"]
    assert report["summary"]["successful"] == 1
    bad = subprocess.run(
        [*command[:5], "", "--prompt", "hi"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert bad.returncode == 2 and "models: give at least one model" in bad.stderr
