"""Worker subprocesses of a benchmark run, started on its broker and database and stopped at its end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cluster_env(broker_url: str, database_url: str, work: Path, **variables: str) -> dict[str, str]:
    """The environment of a benchmark's workers: this one's, less any LLM_ROUTER_ setting, on its broker and
    database, with its scratch folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_ROUTER_")}
    env.update(
        LLM_ROUTER_BROKER_URL=broker_url,
        LLM_ROUTER_DATABASE_URL=database_url,
        LLM_ROUTER_VAR_DIR=str(work / "var"),
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",  # a worker killed whole keeps its log to its last line
        **variables,
    )
    return env


class Cluster:
    """Worker processes on the benchmark's broker and database; every one is stopped on exit."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs = env, logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *arguments: str, ready: str = "ready: tiers=") -> subprocess.Popen[bytes]:
        log_path = self.logs / f"{name}.log"
        command = [sys.executable, "-m", "llm_router.cli.main", "worker", "--hostname", f"{name}@bench", *arguments]
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.processes.append(process)
        self._wait_for(process, log_path, ready)
        return process

    def start_command(self, name: str, command: list[str], ready: str, cwd: Path) -> None:
        log_path = self.logs / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        self.processes.append(process)
        self._wait_for(process, log_path, ready)

    @staticmethod
    def _wait_for(process: subprocess.Popen[bytes], log_path: Path, ready: str) -> None:
        deadline = time.monotonic() + 180
        while ready not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{log_path.name}: not ready\n{log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
