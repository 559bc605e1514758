"""`llm-router dev`: one command starts a worker, the gateway with a key of its own and Flower on the embedded
defaults, says where each is, serves a job end to end, and stops everything on Ctrl-C, its key revoked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine

from llm_router.tasks.store import JobStore
from tests.conftest import embedded_env
from tests.support.gateway import auth, free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dev_starts_everything_serves_a_job_and_stops_it_all(models_dir: Path, tmp_path: Path) -> None:
    port, flower_port = free_port(), free_port()
    env = embedded_env(models_dir)
    log = tmp_path / "dev.out"
    command = [
        sys.executable,
        "-m",
        "llm_router.cli.main",
        "dev",
        "--port",
        str(port),
        "--flower-port",
        str(flower_port),
    ]
    with log.open("wb") as out:
        dev = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "all up" not in log.read_text():
            assert dev.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        said = log.read_text()
        key = re.search(r"^key:\s+(\S+)", said, re.MULTILINE)[1]  # type: ignore[index]
        password = re.search(r"password (\S+)\)", said)[1]  # type: ignore[index]
        pids = [int(pid) for pid in re.findall(r"pid (\d+), log", said)]
        assert len(pids) == 3  # the worker, the gateway and Flower
        gateway = f"http://127.0.0.1:{port}"
        created = httpx.post(f"{gateway}/v1/jobs", headers=auth(key), json={"kind": "classify", "input": "Lovely!"})
        assert created.status_code == 202, created.text
        done = httpx.get(f"{gateway}/v1/jobs/{created.json()['id']}?wait=60", headers=auth(key), timeout=70).json()
        assert done["status"] == "succeeded" and done["result"]["labels"][0]["label"] == "POSITIVE"
        flower = f"http://127.0.0.1:{flower_port}/api/workers"
        seen: dict[str, object] = {}
        while not seen and time.monotonic() < deadline:  # Flower asks the workers every few seconds
            answer = httpx.get(flower, params={"refresh": "1"}, auth=("dev", password), timeout=30)
            assert answer.status_code == 200
            seen = answer.json()
        assert seen  # Flower sees the worker
        assert httpx.get(flower).status_code == 401  # never without the password
        dev.send_signal(signal.SIGINT)  # Ctrl-C
        assert dev.wait(timeout=90) == 0, log.read_text()
    finally:
        if dev.poll() is None:
            dev.kill()
    assert log.read_text().rstrip().endswith("stopped")
    assert not [pid for pid in pids if _alive(pid)]
    store = JobStore(create_engine(f"sqlite:///{tmp_path / 'var' / 'llm-router.db'}"))
    assert store.key_for(key) is None  # the session's key is revoked
