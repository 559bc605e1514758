"""A worker reports its own processes only: a state file left by an earlier process of a reused pid is not
one of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_router.workers import state


@pytest.fixture(autouse=True)
def _state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)


def test_a_process_reports_itself_with_its_start_time() -> None:
    state.publish(os.getpid(), {"pool": "remote"})
    [mine] = state.collect(os.getpid())
    assert mine["pool"] == "remote" and mine["pid"] == os.getpid()
    assert mine["started"] == state.started(os.getpid()) is not None


def test_a_file_of_an_earlier_process_with_the_same_pid_is_dropped() -> None:
    folder = state.state_folder(os.getpid())
    folder.mkdir(parents=True)
    earlier = {"pool": "local", "torch_loaded": True, "pid": os.getpid(), "started": state.started(os.getpid()) - 1}
    (folder / f"{os.getpid()}.json").write_text(json.dumps(earlier))
    assert state.collect(os.getpid()) == []
    assert not list(folder.iterdir())


def test_a_file_of_a_process_that_ended_is_dropped() -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(ended.stdout)
    folder = state.state_folder(os.getpid())
    folder.mkdir(parents=True)
    (folder / f"{pid}.json").write_text(json.dumps({"pool": "local", "pid": pid}))
    assert state.collect(os.getpid()) == []


def test_a_starting_worker_clears_what_its_pid_left() -> None:
    state.publish(os.getpid(), {"pool": "local"})
    state.clear(os.getpid())
    assert state.collect(os.getpid()) == []
    state.clear(os.getpid())  # nothing there: no error
