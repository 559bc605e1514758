"""What a worker process has loaded, for ``llm-router status`` and the ``llm_router_info`` control command.

Models live in the pool's child processes, but Celery's remote-control commands are answered by the
worker's main process. Each process that runs jobs writes a small JSON file (pid, device, models, memory)
into a folder named after its main process; the main process reads its children's files when asked.

Pids are reused (a host's pid range wraps within a long run), so a file names its process by pid and start
time, and a main process empties its folder when it starts: a file left by a killed worker of the same pid
would otherwise be reported as one of its own processes.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

STATE_ROOT = Path(tempfile.gettempdir()) / "llm-router-workers"


def state_folder(main_pid: int) -> Path:
    return STATE_ROOT / str(main_pid)


def clear(main_pid: int) -> None:
    """Remove what earlier processes of this pid left (called by a worker's main process as it starts)."""
    shutil.rmtree(state_folder(main_pid), ignore_errors=True)


def publish(main_pid: int, state: dict[str, Any]) -> None:
    folder = state_folder(main_pid)
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    target = folder / f"{pid}.json"
    scratch = target.with_suffix(f".{threading.get_ident()}.tmp")  # two threads may publish at once
    scratch.write_text(json.dumps({**state, "pid": pid, "started": started(pid), "rss_mb": rss_mb()}))
    os.replace(scratch, target)


def started(pid: int) -> int | None:
    """When the process began, in clock ticks since boot (Linux); None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, began: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return began is None or started(pid) in (None, began)


def collect(main_pid: int) -> list[dict[str, Any]]:
    """States of this worker's live processes; files of processes that ended are removed."""
    states = []
    for path in sorted(state_folder(main_pid).glob("*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(state.get("pid", 0)), state.get("started")):
            states.append(state)
        else:
            path.unlink(missing_ok=True)
    return states


def rss_mb() -> float:
    """Resident memory of this process now (Linux), else its peak."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
