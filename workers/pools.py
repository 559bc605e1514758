"""Worker pool definitions: which queues a pool serves, and how it runs models there.

``cpu``: Celery's prefork pool, torch threads divided between the processes.
``gpu``: the solo pool (CUDA must never be initialised before a fork), one process per GPU, cuda required.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from broker.catalogue import Catalogue
from tasks.errors import ConfigurationError
from workers.device import DeviceChoice, resolve_device
from workers.runtime import WorkerProfile

PoolName = Literal["cpu", "gpu"]


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
    cores = cores or os.cpu_count() or 1
    if pool == "gpu":
        resolved = resolve_device(device or "cuda")
        if concurrency not in (None, 1):
            raise ConfigurationError("--concurrency: the gpu pool runs one process per GPU (concurrency 1)")
        return PoolPlan(chosen, "solo", 1, WorkerProfile(pool="gpu", device=resolved, torch_threads=max(1, cores)))
    resolved = resolve_device(device or "cpu")
    count = concurrency or 1
    if count < 1:
        raise ConfigurationError("--concurrency: must be at least 1")
    threads = max(1, cores // count)
    return PoolPlan(chosen, "prefork", count, WorkerProfile(pool="cpu", device=resolved, torch_threads=threads))
