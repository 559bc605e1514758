"""The command line's small promises, without services: its version, and where each model of the catalogue
comes from."""

from __future__ import annotations

import io
import json
import os
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

import llm_router
from llm_router.cli.main import cli


@pytest.fixture(autouse=True)
def _embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("LLM_ROUTER_")]:
        monkeypatch.delenv(name)


def test_the_version_is_the_installed_distributions() -> None:
    shown = CliRunner().invoke(cli, ["--version"])
    assert shown.exit_code == 0 and shown.output.strip() == f"llm-router {version('llm-runner-router')}"
    assert llm_router.__version__ == version("llm-runner-router")


def test_models_list_says_remote_models_need_no_preparing(tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(
        f"""
default_tier = "fast"
tier_order = ["fast"]
[tiers.fast]
generate = ["org/remote-chat", "org/local-unprepared"]
embed = ["org/on-disk"]
[models."org/remote-chat"]
provider = "openai"
base_url = "http://127.0.0.1:9"
[models."org/local-unprepared"]
provider = "local"
task = "generate"
[models."org/on-disk"]
provider = "local"
task = "embed"
path = "{tmp_path}"
"""
    )
    env = {"LLM_ROUTER_CONFIG": str(catalogue), "LLM_ROUTER_MODELS_DIR": str(tmp_path / "models")}
    listed = CliRunner().invoke(cli, ["models", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    prepared = {row["model"]: row["prepared"] for row in json.loads(listed.output)}
    assert prepared == {"org/remote-chat": "remote", "org/local-unprepared": "no", "org/on-disk": "yes"}


def test_the_batch_progress_line_counts_invalid_lines_apart_as_the_summary_does() -> None:
    from llm_router.cli.batch import Progress

    out = io.StringIO()
    Progress(5, out).show(5, 0, 2, final=True)
    line = out.getvalue()
    assert "5/5 done, 0 failed, 2 invalid" in line
    quiet = io.StringIO()
    Progress(3, quiet).show(3, 1, final=True)
    assert "3/3 done, 1 failed, " in quiet.getvalue() and "invalid" not in quiet.getvalue()


def test_models_info_offline_shows_a_prepared_models_own_card(tmp_path: Path) -> None:
    from llm_router.workers.bundled.prepare import minilm_source

    models = tmp_path / "models"
    shutil.copytree(minilm_source(), models / "sentence-transformers" / "all-MiniLM-L6-v2")
    env = {"LLM_ROUTER_MODELS_DIR": str(models), "HF_HUB_OFFLINE": "1"}
    shown = CliRunner().invoke(cli, ["models", "info", "sentence-transformers/all-MiniLM-L6-v2", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    card = json.loads(shown.output)
    assert card["licence"] == "apache-2.0" and card["library"] == "sentence-transformers" and card["task"] == "embed"
    assert card["parameters"] == 22_713_728 and "feature-extraction" in card["tags"]
    assert card["source"].startswith(f"the folder {models}") and "offline" in card["source"]
    unknown = CliRunner().invoke(cli, ["models", "info", "org/not-here"], env=env)
    assert unknown.exit_code == 3 and "offline mode is on" in unknown.output
