"""`llm-router demo`, a newcomer's first command, on the embedded defaults (no service): every answer right,
the models' loading told apart from the jobs, and a second run saying which answers came from the cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import embedded_env


def _demo(folder: Path, models_dir: Path) -> subprocess.CompletedProcess[str]:
    env = embedded_env(models_dir)
    command = [sys.executable, "-m", "llm_router.cli.main", "demo", "--timeout", "300"]
    return subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=600)


def test_the_demo_runs_on_embedded_defaults_and_says_what_came_from_the_cache(models_dir: Path, tmp_path: Path) -> None:
    first = _demo(tmp_path, models_dir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "(embedded, under ./var)" in first.stdout and (tmp_path / "var" / "llm-router.db").is_file()
    assert "its models loaded (the jobs start now)" in first.stdout
    assert "from the cache" not in first.stdout and "The capital of France is Paris." in first.stdout
    second = _demo(tmp_path, models_dir)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "4 of 4 answered from the cache" in second.stdout
    assert second.stdout.count("· from the cache]") == 4
    assert "200 embed jobs" in second.stdout  # the bulk line runs afresh every time
