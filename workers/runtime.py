"""The per-process runtime of a worker: database, model registry and backends, built after fork.

Celery's prefork pool forks its children from a parent that must not hold open database connections,
torch threads or loaded models; everything here is built lazily in the process that runs the jobs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from broker.catalogue import Catalogue
from broker.settings import Settings
from tasks.database import make_engine
from tasks.repository import JobStore
from workers.backends import make_backend
from workers.backends.base import Backend
from workers.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerProfile:
    """How this worker runs models; set by ``llm-router worker``, defaulted for plain ``celery worker``."""

    pool: str = "cpu"
    device: str = "cpu"
    torch_threads: int | None = None


@dataclass
class WorkerRuntime:
    settings: Settings
    catalogue: Catalogue
    profile: WorkerProfile
    store: JobStore
    registry: ModelRegistry
    _backends: dict[str, Backend] = field(default_factory=dict)

    def backend(self, provider: str) -> Backend:
        if provider not in self._backends:
            self._backends[provider] = make_backend(provider, self.registry)
        return self._backends[provider]


def build_runtime(settings: Settings, catalogue: Catalogue, profile: WorkerProfile) -> WorkerRuntime:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)
    store = JobStore(make_engine(settings.resolved_database_url, sqlite_busy_timeout_s=settings.sqlite_busy_timeout_s))
    registry = ModelRegistry(catalogue, settings.models_dir, profile.device, settings.hf_cache_dir)
    log.info(
        "worker runtime pid=%s pool=%s device=%s torch_threads=%s database=%s",
        os.getpid(),
        profile.pool,
        profile.device,
        torch.get_num_threads(),
        settings.safe_database_url(),
    )
    return WorkerRuntime(settings, catalogue, profile, store, registry)
