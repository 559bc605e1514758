"""Bad input through ``Router`` and the CLI: a clear error naming the field and the limit, nothing
enqueued, no row written. A broker refusal leaves a failed row, never a half-written queued one."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from llm_router.broker.client import EnqueueFailed, Router
from llm_router.broker.settings import Settings
from llm_router.cli.main import cli
from llm_router.tasks import limits
from llm_router.tasks.errors import InvalidRequest
from tests.conftest import queued

# A broker database of its own that no worker consumes, so any message enqueued by mistake stays visible.
QUIET_BROKER = "redis://127.0.0.1:6379/12"
QUEUES = ("fast", "balanced", "quality")


@pytest.fixture(scope="module")
def quiet_env(cluster_env: dict[str, str]) -> dict[str, str]:
    return {**cluster_env, "LLM_ROUTER_BROKER_URL": QUIET_BROKER}


@pytest.fixture(scope="module")
def quiet_router(cluster_settings: Settings) -> Iterator[Router]:
    with Router(cluster_settings.model_copy(update={"broker_url": QUIET_BROKER})) as router:
        yield router


@pytest.fixture
def nothing_written(pg_url: str) -> Iterator[None]:
    """Asserts that the test body enqueued no message and wrote no job row."""
    engine = create_engine(pg_url)
    client = redis.Redis.from_url(QUIET_BROKER)
    client.flushdb()

    def jobs() -> int:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM jobs")).scalar_one())

    before = jobs()
    yield
    assert jobs() == before, "a rejected submit wrote a job row"
    assert sum(queued(client, queue) for queue in QUEUES) == 0, "a rejected submit enqueued a message"
    client.close()
    engine.dispose()


ROUTER_CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    # (method, arguments, words the error must contain)
    ("generate", {"prompt": ""}, ["prompt", "at least 1 character"]),  # empty prompt
    ("generate", {"prompt": 42}, ["prompt", "valid string"]),  # wrong type
    ("generate", {"prompt": "hi", "max_tokens": "many"}, ["max_tokens", "valid integer"]),  # wrong type
    ("generate", {"prompt": "hi", "max_tokens": limits.MAX_TOKENS_CAP + 1}, ["max_tokens", str(limits.MAX_TOKENS_CAP)]),
    ("generate", {"prompt": "hi", "tier": "premium"}, ["tier", "premium", "fast, balanced, quality"]),  # unknown tier
    ("generate", {"prompt": "hi", "model": "gpt2"}, ["model", "gpt2"]),  # model not in the catalogue
    ("generate", {"prompt": "x" * (limits.MAX_PROMPT_CHARS + 1)}, ["prompt", str(limits.MAX_PROMPT_CHARS)]),
    ("generate", {"prompt": "hi", "temperature": float("inf")}, ["temperature", "finite"]),
    ("embed", {"input": ["a"] * (limits.MAX_INPUTS + 1)}, ["input", str(limits.MAX_INPUTS)]),  # too many inputs
    ("embed", {"input": "x" * (limits.MAX_INPUT_CHARS + 1)}, ["input.0", str(limits.MAX_INPUT_CHARS)]),  # oversize
    ("classify", {"input": [["nested"]]}, ["input.0", "valid string"]),  # wrong type
    ("classify", {"input": "fine", "surprise": True}, ["surprise", "not permitted"]),  # unknown parameter
]


@pytest.mark.parametrize(("method", "arguments", "words"), ROUTER_CASES)
def test_router_rejects_bad_input(
    quiet_router: Router, nothing_written: None, method: str, arguments: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        getattr(quiet_router, method)(**arguments)
    for word in words:
        assert word in str(caught.value), f"{word!r} missing from {caught.value}"


def test_router_rejects_an_unknown_kind(quiet_router: Router, nothing_written: None) -> None:
    with pytest.raises(InvalidRequest, match="kind: unknown job kind 'translate'"):
        quiet_router.submit({"kind": "translate", "input": "hola"})


CLI_CASES: list[tuple[list[str], list[str]]] = [
    # (arguments after `llm-router submit`, words the error must contain)
    (["generate", ""], ["prompt", "at least 1 character"]),  # empty prompt
    (["generate", "hi", "--max-tokens", "lots"], ["--max-tokens", "not a valid integer"]),  # wrong type
    (["generate", "hi", "--params", '{"temperature": "hot"}'], ["temperature", "valid number"]),  # wrong type
    (["generate", "hi", "--max-tokens", "5000"], ["max_tokens", "2048"]),  # over the cap
    (["generate", "hi", "--params", "{oops"], ["--params", "not valid JSON"]),
    (["summarise", "text"], ["kind", "summarise"]),  # unknown kind
    (["generate", "hi", "--tier", "premium"], ["tier", "premium"]),  # unknown tier
    (["classify", "hi", "--model", "no-org/no-model"], ["model", "no-org/no-model"]),  # unknown model
    (["embed", *(["x"] * (limits.MAX_INPUTS + 1))], ["input", "256"]),  # too many inputs
    (["classify", "y" * (limits.MAX_INPUT_CHARS + 1)], ["input.0", "8192"]),  # oversize text
]


@pytest.mark.parametrize(("arguments", "words"), CLI_CASES)
def test_cli_rejects_bad_input(
    quiet_env: dict[str, str], nothing_written: None, arguments: list[str], words: list[str]
) -> None:
    outcome = CliRunner().invoke(cli, ["submit", *arguments], env=quiet_env)
    assert outcome.exit_code == 2, outcome.output
    for word in words:
        assert word in outcome.output, f"{word!r} missing from {outcome.output!r}"


def test_cli_console_script_reports_json_errors(quiet_env: dict[str, str], nothing_written: None) -> None:
    executable = Path(sys.executable).with_name("llm-router")
    completed = subprocess.run(
        [str(executable), "submit", "generate", "hi", "--max-tokens", "9999", "--json"],
        env=quiet_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2, completed.stderr
    assert "max_tokens" in json.loads(completed.stdout)["error"]


def test_an_unreachable_broker_leaves_a_failed_row_not_a_queued_one(cluster_settings: Settings, pg_url: str) -> None:
    dead = cluster_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with Router(dead) as router:
        router.app.conf.broker_connection_timeout = 1
        router.app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1}
        with pytest.raises(EnqueueFailed, match="could not be enqueued") as caught:
            router.embed("hello", tier="fast")
    job_id = str(caught.value).split()[1]
    engine = create_engine(pg_url)
    with engine.connect() as connection:
        status, error = connection.execute(text("SELECT status, error FROM jobs WHERE id = :id"), {"id": job_id}).one()
    engine.dispose()
    assert status == "failed" and "could not enqueue" in error
