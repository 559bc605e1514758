"""`Router.evaluate` and `llm-router evaluate` on a real worker and the bundled models: a suite of every kind of
expectation, the guide's report checked against its cases, JUnit XML, the bulk lanes, and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.reports import EvaluationReport
from tests.conftest import REPO, WorkerProcess

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SENTIMENT = "llm-runner-router/minilm-sentiment"
ECHO = "acme/parrot"  # answers with the prompt: the text expectations are known in advance
CATALOGUE = f"""
default_tier = "parrot"
tier_order = ["parrot", "smol"]
[tiers.parrot]
generate = ["{ECHO}"]
embed = ["{MINILM}"]
classify = ["{SENTIMENT}"]
[tiers.smol]
generate = ["{SMOL}"]
embed = ["{MINILM}"]
classify = ["{SENTIMENT}"]
[models."{ECHO}"]
provider = "echo"
[models."{SMOL}"]
provider = "local"
dtype = "bfloat16"
[models."{MINILM}"]
provider = "local"
task = "embed"
[models."{SENTIMENT}"]
provider = "local"
task = "classify"
"""
SUITE = r"""
cases:
  - name: greeting
    prompt: "Hello, how are you?"
    expected: ["hello", "hi", "good"]          # alternatives
    max_tokens: 20
  - name: capital
    prompt: "The capital of France is Paris."
    expected: "paris"                          # a substring, whatever the case
  - name: number
    prompt: "The answer is 42."
    expected: {regex: '\b\d{2}\b'}             # a pattern
    temperature: 0
  - name: similar
    kind: embed
    input: "A cat sits on the mat."
    expected: {similar_to: "A kitten is sitting on a rug.", min_cosine: 0.5}
  - name: happy
    kind: classify
    input: "I love this, it is wonderful!"
    expected: {label: POSITIVE}
  - name: must-fail
    prompt: "ping"
    expected: "pong"                           # the parrot says ping
  - name: anything
    prompt: "Say one word."
    max_tokens: 5
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("evaluate")
    (path / "catalogue.toml").write_text(CATALOGUE)
    (path / "suite.yaml").write_text(SUITE)
    return path


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], folder: Path) -> WorkerProcess:
    return start_worker("parrot,smol", "evaluated", env={"LLM_ROUTER_CONFIG": str(folder / "catalogue.toml")})


@pytest.fixture(scope="module")
def router(cluster_settings: Settings, folder: Path) -> Iterator[Router]:
    with Router(cluster_settings.model_copy(update={"config": folder / "catalogue.toml"})) as router:
        yield router


def check_numbers(report: EvaluationReport) -> None:
    """The guide's report, recomputed from its own details."""
    done = [case for case in report.details if case.success]
    assert report.total == len(report.details)
    assert report.passed == sum(case.passed for case in report.details)
    assert report.failed == report.total - report.passed
    assert report.success_rate == pytest.approx(100 * report.passed / report.total)
    assert report.avg_latency_ms == round(sum(c.latency_ms or 0 for c in done) / len(done))
    assert report.avg_tokens == round(sum(c.tokens or 0 for c in done) / len(done))


def test_a_suite_of_every_expectation_on_the_bundled_models(
    worker: WorkerProcess, router: Router, folder: Path, count_rows: Callable[[str], int]
) -> None:
    evaluation = router.evaluate("tier:parrot", folder / "suite.yaml", timeout=180)
    assert not evaluation.timed_out
    (report,) = evaluation.reports
    verdicts = {case.name: case.passed for case in report.details}
    assert verdicts == {
        "greeting": True,
        "capital": True,
        "number": True,
        "similar": True,
        "happy": True,
        "must-fail": False,
        "anything": True,  # no expectation: the guide passes it when the model answered
    }
    by_name = {case.name: case for case in report.details}
    assert by_name["must-fail"].reason == "the answer does not contain 'pong'"
    assert by_name["happy"].answer == "POSITIVE"  # the real sentiment model's label
    assert by_name["similar"].answer is not None and float(by_name["similar"].answer.split()[1]) >= 0.5
    assert (report.total, report.passed, report.failed) == (7, 6, 1)
    check_numbers(report)
    # Through the bulk lanes, every job a record of the run.
    queues = count_rows(f"SELECT count(DISTINCT queue) FROM jobs WHERE batch_id = '{evaluation.run_id}'")
    bulk = count_rows(f"SELECT count(*) FROM jobs WHERE batch_id = '{evaluation.run_id}' AND queue = 'parrot.bulk'")
    assert queues == 1 and bulk == 7
    run = router.store.get_run(evaluation.run_id)
    assert run is not None and run.kind == "evaluate" and run.status == "succeeded" and run.name == "evaluate suite"
    assert run.summary is not None and run.summary["reports"][0]["passed"] == 6


def test_two_targets_side_by_side_with_junit_from_the_command(
    worker: WorkerProcess, cluster_env: dict[str, str], folder: Path
) -> None:
    junit = folder / "report.xml"
    env = {**cluster_env, "LLM_ROUTER_CONFIG": str(folder / "catalogue.toml")}
    command = [
        sys.executable,
        "-m",
        "llm_router.cli.main",
        "evaluate",
        "tier:parrot,tier:smol",
        str(folder / "suite.yaml"),
    ]
    done = subprocess.run(
        [*command, "--junit", str(junit), "--concurrency", "3", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 1, done.stderr  # must-fail fails
    reports = [EvaluationReport(**{**r, "details": []}) for r in json.loads(done.stdout)["reports"]]
    assert [r.model for r in reports] == ["tier:parrot", "tier:smol"]
    parrot, smol = json.loads(done.stdout)["reports"]
    assert parrot["passed"] == 6 and smol["total"] == 7
    suites = ElementTree.parse(junit).getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == ["suite on tier:parrot", "suite on tier:smol"]
    assert suites[0].get("tests") == "7" and suites[0].get("failures") == "1" and suites[0].get("errors") == "0"
    failed = [case.get("name") for case in suites[0].iter("testcase") if case.find("failure") is not None]
    assert failed == ["must-fail"]
    assert int(suites[1].get("failures") or 0) + int(suites[1].get("errors") or 0) == smol["failed"]


@pytest.mark.parametrize(
    ("suite", "problem"),
    [
        ("cases: [name: x", "not valid YAML"),  # not YAML
        ("just a string", "expected a list of cases"),
        ("[]", "holds no case"),
        ("- name: a\n  prompt: hi\n  expected: {regex: '(unclosed'}", "expected.regex does not compile"),
        ("- name: a\n  prompt: hi\n  expected: {regex: '(a|aa)+$'}", "takes longer than 0.1 s"),  # backtracking
        ("- name: a\n  prompt: hi\n  expected: {regex: '(x+x+)+y'}", "nests a quantifier"),
        ("- name: a\n  kind: embed\n  input: hi\n  expected: hi", "an embed case expects {similar_to"),
        ("- name: a\n  prompt: hi\n- name: a\n  prompt: ho", "'a' repeated"),
        ("- name: a\n  prompt: hi\n  max_tokens: 99999", "max_tokens"),  # refused by the job's own schema
    ],
)
def test_a_bad_case_file_is_refused_naming_the_problem_and_nothing_is_recorded(
    router: Router, folder: Path, count_rows: Callable[[str], int], suite: str, problem: str
) -> None:
    path = folder / "bad.yaml"
    path.write_text(suite)
    before = (count_rows("SELECT count(*) FROM runs"), count_rows("SELECT count(*) FROM jobs"))
    with pytest.raises(InvalidRequest, match=re.escape(problem)):
        router.evaluate("tier:parrot", path)
    assert (count_rows("SELECT count(*) FROM runs"), count_rows("SELECT count(*) FROM jobs")) == before


def test_bad_targets_are_refused(router: Router, folder: Path) -> None:
    suite = folder / "suite.yaml"
    with pytest.raises(InvalidRequest, match="models: give at least one model"):
        router.evaluate([], suite)
    with pytest.raises(InvalidRequest, match=r"at most 8 models at once \(got 1000\)"):
        router.evaluate([f"org/m{i}" for i in range(1000)], suite)
    with pytest.raises(InvalidRequest, match="case 'similar' on acme/parrot: model: unknown model"):
        router.evaluate(ECHO, suite)  # the parrot cannot embed
    with pytest.raises(InvalidRequest, match=re.escape("expected a .yaml, .yml or .jsonl case file")):
        router.evaluate("tier:parrot", folder / "catalogue.toml")


def test_jsonl_cases_and_the_command_line_errors(
    worker: WorkerProcess, cluster_env: dict[str, str], folder: Path
) -> None:
    lines = folder / "cases.jsonl"
    lines.write_text(json.dumps({"name": "echo", "prompt": "hello", "expected": "hello"}) + "\n")
    env = {**cluster_env, "LLM_ROUTER_CONFIG": str(folder / "catalogue.toml")}
    command = [sys.executable, "-m", "llm_router.cli.main", "evaluate", ECHO]
    done = subprocess.run([*command, str(lines)], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "echo" in done.stdout and "100.0 %" in done.stdout
    (folder / "broken.jsonl").write_text('{"name": "x", "prompt": "hi"}\n{not json\n')
    bad = subprocess.run(
        [*command, str(folder / "broken.jsonl")], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert bad.returncode == 2 and "line 2 is not JSON" in bad.stderr
