"""Processes a command starts and stops itself (the demo's worker; dev's worker, gateway and Flower): each
runs ``llm-router`` in a process group of its own, its output in a log file of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx

WORKER_READY = "ready: tiers="  # what a worker logs once its models are loaded
STOP_S = 30.0  # what a process is given to stop before it is killed


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, arguments: list[str], log: Path, env: dict[str, str] | None = None) -> Child:
        """``llm-router ARGUMENTS``, its output in ``log`` (emptied first)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "llm_router.cli.main", *arguments],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stopped whole, and not by the terminal's Ctrl-C
            )
        return cls(name, process, log)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise click.ClickException(f"{self.name} exited with code {self.process.returncode}; see {self.log}")

    def wait_until(self, *, ready: str | None = None, url: str | None = None, timeout: float = 300.0) -> None:
        """Until the log holds ``ready`` or ``url`` answers; a process that exits first is a failure."""
        deadline = time.monotonic() + timeout
        while True:
            if ready is not None and ready in self.log.read_text(errors="replace"):
                return
            if url is not None:
                try:
                    httpx.get(url, timeout=1.0)
                    return
                except httpx.TransportError:
                    pass
            self.check_alive()
            if time.monotonic() > deadline:
                raise click.ClickException(f"{self.name} was not ready after {timeout:g} s; see {self.log}")
            time.sleep(0.1)

    def stop(self) -> None:
        # The main process only: a worker stops its pool's children itself (a child signalled too is only
        # replaced, and the worker stops late).
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
