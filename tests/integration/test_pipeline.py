"""The guide's processText as a pipeline the workers chain, on the bundled models: each step a job linked to
the run, the tone chosen from the real classification, a failing step ending the run, pipelines declared in
the catalogue, the sweeper carrying on a pipeline whose worker died between two steps, and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from llm_router.broker.catalogue import load_catalogue
from llm_router.broker.client import Router
from llm_router.broker.pipeline_runs import advance, start_pipeline
from llm_router.broker.pipelines import GUIDE_PROMPT
from llm_router.broker.submitting import Submitter
from llm_router.tasks.errors import ConfigurationError, InvalidRequest
from llm_router.workers.execution import run_job
from llm_router.workers.messages import JobMessage
from llm_router.workers.runtime import WorkerProfile, build_runtime
from llm_router.workers.sweeper import STALLED_PIPELINE_S, Sweeper
from tests.conftest import REPO, WorkerProcess

ECHO = "acme/echo"
MISSING = "acme/missing"
CATALOGUE = f"""
default_tier = "piped"
tier_order = ["piped", "echoing"]
[tiers.piped]
generate = ["HuggingFaceTB/SmolLM2-135M-Instruct"]
embed = ["sentence-transformers/all-MiniLM-L6-v2"]
classify = ["llm-runner-router/minilm-sentiment"]
[tiers.echoing]
generate = ["{ECHO}", "{MISSING}"]
classify = ["llm-runner-router/minilm-sentiment"]
[models."HuggingFaceTB/SmolLM2-135M-Instruct"]
provider = "local"
task = "generate"
dtype = "bfloat16"
[models."sentence-transformers/all-MiniLM-L6-v2"]
provider = "local"
task = "embed"
[models."llm-runner-router/minilm-sentiment"]
provider = "local"
task = "classify"
[models."{ECHO}"]
provider = "echo"
[models."{MISSING}"]
provider = "local"

[pipelines.triage]                         # a pipeline of the user's own, run by name
steps = [
  {{ name = "mood", kind = "classify", tier = "echoing", input = "{{text}}" }},
  {{ name = "note", kind = "generate", model = "{ECHO}", prompt = "[{{mood}}/{{tone}}] {{text}}" }},
]
tones = {{ POSITIVE = "cheerful", NEGATIVE = "careful" }}

[pipelines.broken]                         # its second step's model has no files anywhere
steps = [
  {{ name = "mood", kind = "classify", tier = "echoing", input = "{{text}}" }},
  {{ name = "answer", kind = "generate", model = "{MISSING}", tier = "echoing", prompt = "{{tone}}: {{text}}" }},
]
"""


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], own_catalogue: Path) -> WorkerProcess:
    env = {"LLM_ROUTER_CONFIG": str(own_catalogue), "LLM_ROUTER_COOLDOWN_S": "0"}
    return start_worker("piped,echoing", "piped", env=env)


def test_the_guides_process_text_on_the_bundled_models(worker: WorkerProcess, own_router: Router) -> None:
    text = "I love this product, it is wonderful!"
    result = own_router.pipeline(text, timeout=180)
    assert result.status == "succeeded", result
    assert [step.name for step in result.steps] == ["sentiment", "reply", "embedding"]
    assert all(step.status == "succeeded" for step in result.steps)
    assert result.sentiment == "POSITIVE" and result.tone == "enthusiastic and helpful"
    assert result.response and result.embedding is not None and len(result.embedding) == 384
    # Three job records, linked to the run by its id and their position, each with its own request.
    jobs = own_router.store.run_jobs(result.run_id)
    assert [(job.run_step, job.kind, job.status) for job in sorted(jobs, key=lambda j: j.run_step or 0)] == [
        (0, "classify", "succeeded"),
        (1, "generate", "succeeded"),
        (2, "embed", "succeeded"),
    ]
    classify, generate, embed = sorted(jobs, key=lambda j: j.run_step or 0)
    assert classify.request is not None and classify.request["input"] == [text]
    assert classify.result is not None and classify.result["labels"][0]["label"] == "POSITIVE"
    assert generate.request is not None
    assert generate.request["prompt"] == GUIDE_PROMPT.format(tone="enthusiastic and helpful", text=text)
    assert generate.request["max_tokens"] == 150 and generate.request["temperature"] == 0.7
    assert embed.request is not None and embed.request["input"] == [result.response]
    run = own_router.store.get_run(result.run_id)
    assert run is not None and run.kind == "pipeline" and run.name == "reply" and run.status == "succeeded"


def test_a_negative_text_gets_the_empathetic_tone(worker: WorkerProcess, own_router: Router) -> None:
    result = own_router.pipeline("This is terrible, I hate it and I am very disappointed.", timeout=180)
    assert result.sentiment == "NEGATIVE" and result.tone == "empathetic and supportive"
    generate = next(job for job in own_router.store.run_jobs(result.run_id) if job.kind == "generate")
    assert generate.request is not None and "in a empathetic and supportive way" in generate.request["prompt"]


def test_a_pipeline_of_the_catalogue_by_name(worker: WorkerProcess, own_router: Router) -> None:
    result = own_router.pipeline("What a lovely day!", name="triage", timeout=120)
    assert result.status == "succeeded"
    assert result.response == "[POSITIVE/cheerful] What a lovely day!"  # the echo model answers with the prompt
    assert result.embedding is None and len(own_router.store.run_jobs(result.run_id)) == 2


def test_a_failing_step_ends_the_pipeline_failed_and_names_it(worker: WorkerProcess, own_router: Router) -> None:
    result = own_router.pipeline("Fine, thanks.", name="broken", timeout=120)
    assert result.status == "failed"
    assert result.error is not None and result.error.startswith("step 2 (answer) failed:")
    assert MISSING in result.error
    assert [step.status for step in result.steps] == ["succeeded", "failed"]


def test_the_sweeper_carries_on_a_pipeline_whose_worker_died_between_two_steps(
    worker: WorkerProcess, own_router: Router
) -> None:
    # The first step runs through the worker's own code path in a runtime that carries nothing on: its
    # final record is written and then nothing happens, as when a worker dies between the two.
    recorded: list[str] = []
    quiet = Submitter(own_router.settings, own_router.catalogue, own_router.store, lambda: own_router.app)
    quiet.publish = lambda job_id, *_, **__: recorded.append(job_id)  # type: ignore[method-assign]
    run_id = start_pipeline(quiet, "triage", "Yay!")
    runtime = build_runtime(own_router.settings, own_router.catalogue, WorkerProfile())
    status = run_job(runtime, "classify", JobMessage(recorded[0], None), "dying-worker", lambda *_: None)
    assert status == "succeeded"
    later = datetime.now(UTC) + timedelta(seconds=STALLED_PIPELINE_S + 1)  # a sweep that late sees it stalled
    assert own_router.store.stalled_pipelines(later) == [run_id]
    assert own_router.get_pipeline(run_id).status == "running"

    def carry_on(stalled: str) -> None:
        advance(own_router.submitter, stalled)

    client = redis.Redis.from_url(own_router.settings.resolved_broker_url)
    sweeper = Sweeper(
        own_router.store,
        client,
        lambda *_: None,
        lambda _: None,
        interval_s=10,
        lost_message_after_s=1800,
        carry_on=carry_on,
    )
    sweeper.sweep(later)
    client.close()
    deadline = time.monotonic() + 60
    while (result := own_router.get_pipeline(run_id)).status == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert result.status == "succeeded" and result.response == "[POSITIVE/cheerful] Yay!"
    assert own_router.store.stalled_pipelines(later) == []
    sweeper.sweep(later)  # carrying on again changes nothing: each step is recorded once
    assert len(own_router.store.run_jobs(run_id)) == 2


@pytest.mark.parametrize(
    ("text", "name", "problem"),
    [
        ("", "reply", "text: expected 1 to 8192 characters"),
        ("   ", "reply", "not only spaces"),
        ("x" * 8193, "reply", "text: expected 1 to 8192 characters"),
        ("hello", "nope", "pipeline: no pipeline 'nope'; the catalogue has reply, triage, broken"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_recorded(
    own_router: Router, count_rows: Callable[[str], int], text: str, name: str, problem: str
) -> None:
    before = (count_rows("SELECT count(*) FROM runs"), count_rows("SELECT count(*) FROM jobs"))
    with pytest.raises(InvalidRequest, match=re.escape(problem)):
        own_router.pipeline(text, name=name)
    assert (count_rows("SELECT count(*) FROM runs"), count_rows("SELECT count(*) FROM jobs")) == before


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        ('{ name = "a", kind = "generate", prompt = "{missing}" }', "{missing} is not one of text, label, tone"),
        ('{ name = "a", kind = "generate", prompt = "{tone}" }', "{tone} needs a classify step before it"),
        ('{ name = "a", kind = "generate", prompt = "{text.upper}" }', "a template names a value, nothing more"),
        ('{ name = "a", kind = "embed", prompt = "{text}" }', "a step of kind embed has an 'input' template"),
        ('{ name = "a", kind = "classify", input = "{text}", tier = "gone" }', "tier 'gone' is not a tier"),
    ],
)
def test_a_bad_pipeline_in_the_catalogue_fails_at_start_naming_it(tmp_path: Path, steps: str, problem: str) -> None:
    path = tmp_path / "catalogue.toml"
    path.write_text(f'tier_order = ["fast"]\n[tiers.fast]\ngenerate = ["m"]\n[pipelines.mine]\nsteps = [{steps}]\n')
    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        load_catalogue(path)


def test_the_commands_run_a_pipeline_and_list_the_runs(
    worker: WorkerProcess, cluster_env: dict[str, str], own_catalogue: Path
) -> None:
    env = {**cluster_env, "LLM_ROUTER_CONFIG": str(own_catalogue)}
    cli = [sys.executable, "-m", "llm_router.cli.main"]
    done = subprocess.run(
        [*cli, "pipeline", "Great work, thank you!", "--name", "triage", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and result["response"] == "[POSITIVE/cheerful] Great work, thank you!"
    table = subprocess.run(
        [*cli, "pipeline", "Fine.", "--name", "broken"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert table.returncode == 1 and "error: step 2 (answer) failed" in table.stdout
    listed = subprocess.run(
        [*cli, "runs", "--kind", "pipeline", "--json"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    runs = json.loads(listed.stdout)
    assert runs[0]["name"] == "broken" and runs[0]["status"] == "failed"
    assert runs[1]["id"] == result["run_id"] and runs[1]["status"] == "succeeded"
    assert all(run["kind"] == "pipeline" for run in runs)
    shown = subprocess.run([*cli, "runs"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert shown.returncode == 0 and "mood succeeded, answer failed" in shown.stdout
