"""The per-process runtime of a worker: database, model registry, HTTP client and backends, built after fork.

Celery's prefork pool forks its children from a parent that must not hold open database connections,
HTTP connections, torch threads or loaded models; everything here is built in the process that runs jobs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from llm_router.broker.catalogue import Catalogue
from llm_router.broker.notifications import DoneNotices
from llm_router.broker.settings import Settings
from llm_router.tasks.database import make_engine
from llm_router.tasks.redaction import install_log_redaction
from llm_router.tasks.store import JobStore, Lease
from llm_router.workers.backends import make_backend
from llm_router.workers.backends.base import Backend
from llm_router.workers.backends.context import BackendContext
from llm_router.workers.cancellation import CancelWatch
from llm_router.workers.cooldown import Cooldowns, LocalCooldowns, RedisCooldowns
from llm_router.workers.job_end import EndHook, close_streams, wake_callers
from llm_router.workers.leases import LeaseKeeper, RunningHere, lease_for_this_process
from llm_router.workers.rate_limits import RateLimiter, Rule, window_rules
from llm_router.workers.registry import ModelRegistry, Quantize
from llm_router.workers.retry import DEFAULT_DOWNGRADES, RetryPolicy
from llm_router.workers.streaming import StreamWriter
from llm_router.workers.webhooks import Webhooks

log = logging.getLogger(__name__)
# A shared-state call that takes longer has failed: the job's message is handed back rather than held.
REDIS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WorkerProfile:
    """How this worker runs models; set by ``llm-router worker``, defaulted for plain ``celery worker``."""

    pool: str = "cpu"
    device: str = "cpu"
    torch_threads: int | None = None
    quantize: Quantize = "none"
    max_memory_bytes: int | None = None
    # Dynamic batching: waiting embed/classify jobs are taken into one model call of up to max_batch
    # inputs; max_wait_ms is how long a short batch waits for more (0: take only what already waits).
    max_batch: int = 64
    max_wait_ms: float = 0.0
    # A bulk job's call also takes the waiting messages up to this many inputs (pools that run models): they
    # go through the model sorted by token count, max_batch at a time, so that little of each pass is padding.
    bulk_window: int = 1024
    niceness: int = 0
    concurrency: int = 1  # jobs this process runs at once (threads of the remote pool)

    @property
    def runs_models(self) -> bool:
        """Whether this process runs models itself (and needs torch); the remote pool only calls APIs."""
        return self.pool != "remote"


@dataclass
class WorkerRuntime:
    settings: Settings
    catalogue: Catalogue
    profile: WorkerProfile
    store: JobStore
    registry: ModelRegistry
    policy: RetryPolicy
    limiter: RateLimiter
    cooldowns: Cooldowns
    lease: Lease
    backend_context: BackendContext
    backends: dict[str, Backend] = field(default_factory=dict)  # by provider, built on first use
    running: RunningHere = field(default_factory=RunningHere)
    _building: threading.Lock = field(default_factory=threading.Lock, repr=False)
    published_version: int = -1  # the registry version last written for `llm-router status`
    notices: DoneNotices | None = None  # wakes the callers waiting for a job (None: no Redis; they poll)
    cancels: CancelWatch = field(default_factory=lambda: CancelWatch(None))  # running jobs asked to stop
    streams: StreamWriter | None = None  # where the deltas of generations submitted with stream=True go
    # Carries a pipeline on once one of its steps ended (given the run's id); set where messages can be sent.
    step_ended: Callable[[str], None] = field(default=lambda _run_id: None)
    webhooks: Webhooks | None = None  # sends completion webhooks; set where messages can be sent
    end_hooks: list[EndHook] = field(default_factory=list)  # what follows a job's final record, in order

    def limit_rules(self, tier: str, provider: str, model_id: str) -> list[Rule]:
        """The windows one call of ``model_id`` on ``tier`` must fit in: the tier's, and its provider key's."""
        spec = self.catalogue.tiers[tier]
        rules = window_rules(("tier", tier), spec.requests_per_minute, spec.requests_per_hour)
        limits = self.catalogue.providers.get(provider)  # type: ignore[call-overload]
        if limits is not None:
            token = self.settings.api_key(self.catalogue.model_spec(model_id).api_key_env)
            # The key is identified by a fingerprint: the secret itself never reaches Redis.
            fingerprint = hashlib.sha256(token.get_secret_value().encode()).hexdigest()[:16] if token else "anonymous"
            rules += window_rules(
                ("provider", provider, fingerprint), limits.requests_per_minute, limits.requests_per_hour
            )
        return rules

    def backend(self, provider: str) -> Backend:
        if provider not in self.backends:
            with self._building:  # the remote pool's threads would otherwise each build one
                if provider not in self.backends:
                    self.backends[provider] = make_backend(provider, self.backend_context)
        return self.backends[provider]


def _set_up_torch(profile: WorkerProfile) -> int:
    """Torch's threads for this process; returns how many it uses."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)
    return int(torch.get_num_threads())


def build_runtime(settings: Settings, catalogue: Catalogue, profile: WorkerProfile) -> WorkerRuntime:
    torch_threads = _set_up_torch(profile) if profile.runs_models else None
    engine = make_engine(
        settings.resolved_database_url,
        sqlite_busy_timeout_s=settings.sqlite_busy_timeout_s,
        pool_size=settings.pool_size_for(profile.concurrency),
        ping_idle_s=None,
    )
    registry = ModelRegistry(
        catalogue,
        settings.models_dir,
        profile.device,
        settings.hf_cache_dir,
        quantize=profile.quantize,
        max_memory_bytes=profile.max_memory_bytes,
    )
    downgrades = DEFAULT_DOWNGRADES if catalogue.downgrades is None else catalogue.downgrades
    policy = RetryPolicy(max_retries=settings.max_retries, downgrades=dict(downgrades), cooldown_s=settings.cooldown_s)
    redis_url = settings.resolved_redis_url
    cooldowns: Cooldowns = (
        RedisCooldowns(
            redis.Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        )
        if redis_url
        else LocalCooldowns()
    )
    log.info(
        "worker runtime pid=%s pool=%s device=%s torch_threads=%s database=%s",
        os.getpid(),
        profile.pool,
        profile.device,
        torch_threads,
        settings.safe_database_url(),
    )
    install_log_redaction(settings.secrets(catalogue.models[m].api_key_env for m in catalogue.models))
    store = JobStore(engine)
    lease = lease_for_this_process(settings.lease_s)
    LeaseKeeper(store, lease).start()
    context = BackendContext(settings, catalogue, registry, profile.max_batch)
    runtime = WorkerRuntime(
        settings, catalogue, profile, store, registry, policy, RateLimiter(redis_url), cooldowns, lease, context
    )
    runtime.notices = DoneNotices(redis_url) if redis_url else None
    runtime.cancels = CancelWatch(redis_url)
    runtime.streams = StreamWriter(redis_url) if redis_url else None
    if runtime.notices is not None:
        runtime.end_hooks.append(wake_callers(runtime.notices))
    if runtime.streams is not None:
        runtime.end_hooks.append(close_streams(runtime.streams))
    return runtime
