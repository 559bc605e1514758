"""Worker pool definitions: which queues a pool serves, and how it runs models there.

``cpu``: Celery's prefork pool, torch threads divided between the processes.
``gpu``: the solo pool (CUDA must never be initialised before a fork), one process per GPU, cuda required.
``remote``: Celery's threads pool in one process, hundreds of HTTP calls in flight; it never imports torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Literal

from llm_router.broker.catalogue import Catalogue
from llm_router.broker.queues import LANES, queue_names
from llm_router.broker.routing import Lane
from llm_router.tasks.errors import ConfigurationError
from llm_router.workers.device import DeviceChoice, resolve_device
from llm_router.workers.registry import Quantize
from llm_router.workers.runtime import WorkerProfile

PoolName = Literal["cpu", "gpu", "remote"]
LaneChoice = Literal["both", "interactive", "bulk"]
# A worker that serves only bulk lanes runs at this niceness, so that on a shared machine the processes
# serving interactive jobs get the CPU the moment they need it (Linux lets a process lower, never raise,
# its own priority).
BULK_NICENESS = 10
# Remote calls wait on the network, not the CPU: one process keeps this many in flight by default.
REMOTE_CONCURRENCY = 200
# Inputs run together: a local model's batch; for remote tiers one HTTP call of the embed or classify jobs
# taken together (TEI's max_client_batch_size and the Inference API take 32 by default).
LOCAL_MAX_BATCH = 64
# Inputs a bulk call takes together, sorted by token count into passes of max_batch: the wider, the less
# padding (run.py's one-input jobs, as Router.batch packs them: the passes hold 22 % more tokens than the
# sentences when a message of 64 is its own call, 8 % in calls of 256, 3 % in 1,024). An interactive job
# waits for one pass, not the call: the worker runs it between two passes (workers.interludes).
BULK_WINDOW = 1024
REMOTE_MAX_BATCH = 32
MAX_REMOTE_CONCURRENCY = 2000


@dataclass(frozen=True)
class PoolPlan:
    queues: list[str]
    execution_pool: str
    concurrency: int
    profile: WorkerProfile


def plan_pool(
    pool: PoolName,
    catalogue: Catalogue,
    *,
    queues: list[str] | None = None,
    concurrency: int | None = None,
    device: DeviceChoice | None = None,
    cores: int | None = None,
    quantize: Quantize = "none",
    max_memory_bytes: int | None = None,
    lanes: LaneChoice = "both",
    max_batch: int | None = None,
    max_wait_ms: float = 0.0,
    bulk_window: int | None = None,
    niceness: int | None = None,
    torch_threads: int | None = None,
) -> PoolPlan:
    chosen = queues or catalogue.tiers_of_pool(pool)
    unknown = [name for name in chosen if name not in catalogue.tiers]
    if unknown:
        raise ConfigurationError(
            f"--queues: unknown queue(s) {', '.join(unknown)}; expected tiers of the catalogue: "
            f"{', '.join(catalogue.ordered_tiers)}"
        )
    if not chosen:
        raise ConfigurationError(f"--pool {pool}: no tier of the catalogue uses this pool; pass --queues")
    if max_batch is None:
        max_batch = REMOTE_MAX_BATCH if pool == "remote" else LOCAL_MAX_BATCH
    if not 1 <= max_batch <= 4096:
        raise ConfigurationError(f"--max-batch: must be between 1 and 4096, got {max_batch}")
    if not 0 <= max_wait_ms <= 10_000:
        raise ConfigurationError(f"--max-wait-ms: must be between 0 and 10000, got {max_wait_ms:g}")
    if bulk_window is None:
        bulk_window = BULK_WINDOW
    if not 1 <= bulk_window <= 16_384:
        raise ConfigurationError(f"--bulk-window: must be between 1 and 16384, got {bulk_window}")
    served: tuple[Lane, ...] = LANES if lanes == "both" else (lanes,)
    names = queue_names(chosen, served)
    nice = niceness if niceness is not None else (BULK_NICENESS if lanes == "bulk" else 0)
    if not 0 <= nice <= 19:
        raise ConfigurationError(f"--nice: must be between 0 and 19, got {nice}")
    batching: dict[str, Any] = {
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "bulk_window": bulk_window,
        "niceness": nice,
    }
    cores = cores or os.cpu_count() or 1
    if pool == "remote":
        _only_remote_models(catalogue, chosen)
        return _remote_plan(names, concurrency, device, quantize, batching)
    if pool == "gpu":
        resolved = resolve_device(device or "cuda")
        if concurrency not in (None, 1):
            raise ConfigurationError("--concurrency: the gpu pool runs one process per GPU (concurrency 1)")
        if quantize != "none" and resolved != "cpu":
            raise ConfigurationError(
                "--quantize: 8-bit dynamic quantisation runs on the CPU only (the gpu pool uses fp16)"
            )
        profile = WorkerProfile("gpu", resolved, max(1, cores), quantize, max_memory_bytes, **batching)
        return PoolPlan(names, "solo", 1, profile)
    resolved = resolve_device(device or "cpu")
    count = concurrency or 1
    if count < 1:
        raise ConfigurationError("--concurrency: must be at least 1")
    if torch_threads is not None and torch_threads < 1:
        raise ConfigurationError(f"--torch-threads: must be at least 1, got {torch_threads}")
    threads = torch_threads or max(1, cores // count)
    profile = WorkerProfile("cpu", resolved, threads, quantize, max_memory_bytes, **batching)
    return PoolPlan(names, "prefork", count, profile)


def _only_remote_models(catalogue: Catalogue, tiers: list[str]) -> None:
    for tier in tiers:
        local = [m for m in catalogue.models_of_tiers([tier]) if catalogue.model_spec(m).provider == "local"]
        if local:
            raise ConfigurationError(
                f"tiers.{tier}: the remote pool runs no local model, and this tier names {', '.join(local)}; "
                "give them a remote provider or serve the tier from the cpu or gpu pool"
            )


def _remote_plan(
    names: list[str], concurrency: int | None, device: DeviceChoice | None, quantize: Quantize, batching: dict[str, Any]
) -> PoolPlan:
    count = REMOTE_CONCURRENCY if concurrency is None else concurrency
    if not 1 <= count <= MAX_REMOTE_CONCURRENCY:
        raise ConfigurationError(
            f"--concurrency: the remote pool runs 1 to {MAX_REMOTE_CONCURRENCY} calls at once, got {count}"
        )
    if device not in (None, "cpu") or quantize != "none":
        raise ConfigurationError("--device, --quantize: the remote pool runs no model of its own")
    profile = WorkerProfile("remote", "cpu", None, "none", None, concurrency=count, **batching)
    return PoolPlan(names, "threads", count, profile)


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """``8GB``, ``512MiB``, ``1.5GB`` or a plain number of bytes (the seed's ``maxMemory: '8GB'``)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match[2].upper() if match else None
    if match is None or unit not in _UNITS:
        raise ConfigurationError(f"--max-memory: {text!r} is not a size such as 8GB, 512MiB or 1500000000")
    return int(float(match[1]) * _UNITS[unit])
