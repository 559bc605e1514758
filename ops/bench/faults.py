"""Faults on this machine's own services and processes, for fault tests and the chaos run: a process killed
whole, Redis restarted without its data, PostgreSQL stopped and started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

# The command the machine's Redis is started with: no persistence, so a restart loses every message.
REDIS_SERVER = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379"]
REDIS_SERVER += ["--save", "", "--appendonly", "no"]


def descendants(pid: int) -> list[int]:
    """The processes under ``pid`` (its children, theirs, …), read from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_whole(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and every process under it at once, as the OOM killer, a lost node or a container
    restart does: nothing of it runs a line more."""
    for pid in [*descendants(process.pid), process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def _redis_answers() -> bool:
    return subprocess.run(["redis-cli", "-h", "127.0.0.1", "ping"], capture_output=True, check=False).returncode == 0


def _until(condition: bool, probe: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while probe() != condition:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout_s:g} s")
        time.sleep(0.1)


def restart_redis(down_s: float = 1.0) -> None:
    """Restart the machine's Redis (no persistence): every message and every key it held is lost."""
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"], timeout=30, check=False)
    _until(False, _redis_answers, "Redis did not stop")
    time.sleep(down_s)
    subprocess.run(REDIS_SERVER, check=True, timeout=30)
    _until(True, _redis_answers, "Redis did not come back")


def postgres(action: str) -> None:
    """``start`` or ``stop`` (fast: open connections are cut) the machine's PostgreSQL cluster."""
    version = os.listdir("/etc/postgresql")[0]
    extra = ["-m", "fast"] if action == "stop" else []
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, *extra], check=True, timeout=60
    )


def restart_postgres(down_s: float = 2.0) -> None:
    postgres("stop")
    time.sleep(down_s)
    postgres("start")


def _rabbitmq_answers() -> bool:
    return (
        subprocess.run(["rabbitmq-diagnostics", "-q", "check_running"], capture_output=True, check=False).returncode
        == 0
    )


def restart_rabbitmq() -> None:
    """Stop and start the machine's RabbitMQ broker (the node stays up): every connection is cut; durable
    queues keep their persistent messages."""
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, timeout=120)
    subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, timeout=120)
    _until(True, _rabbitmq_answers, "RabbitMQ did not come back", timeout_s=60)
