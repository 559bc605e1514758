"""What a worker process has loaded, for ``llm-router status`` and the ``llm_router_info`` control command.

Models live in the pool's child processes, but Celery's remote-control commands are answered by the
worker's main process. Each process that runs jobs writes a small JSON file (pid, device, models, memory)
into a folder named after its main process; the main process reads its children's files when asked.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
from pathlib import Path
from typing import Any

STATE_ROOT = Path(tempfile.gettempdir()) / "llm-router-workers"


def state_folder(main_pid: int) -> Path:
    return STATE_ROOT / str(main_pid)


def publish(main_pid: int, state: dict[str, Any]) -> None:
    folder = state_folder(main_pid)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{os.getpid()}.json"
    scratch = target.with_suffix(".tmp")
    scratch.write_text(json.dumps({**state, "pid": os.getpid(), "rss_mb": rss_mb()}))
    os.replace(scratch, target)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect(main_pid: int) -> list[dict[str, Any]]:
    """States of this worker's live processes; files of processes that ended are removed."""
    states = []
    for path in sorted(state_folder(main_pid).glob("*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(state.get("pid", 0))):
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
