"""llm-runner-router: generation, embedding and classification jobs, routed by tier to Hugging Face models
through a Celery worker cluster, every job, attempt and its usage recorded.

    from llm_router import Router, JobFailed
    with Router() as router:                # settings from the environment (or the embedded defaults)
        print(router.generate("Hello", max_tokens=20).wait(timeout=60).text)

The package's layers, each importing only those after it: ``cli`` and ``gateway`` (the front doors),
``workers`` (what a worker does with a job), ``broker`` (how jobs travel), ``tasks`` (what a job is and where
it is kept). Nothing here imports torch: the names below load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# The public names, and the module each lives in.
_EXPORTS = {
    "Router": "llm_router.broker.router",
    "BatchSubmission": "llm_router.broker.submitting",
    "EnqueueFailed": "llm_router.broker.publishing",
    "Job": "llm_router.broker.jobs",
    "UnknownJob": "llm_router.broker.jobs",
    "AsyncRouter": "llm_router.broker.async_client",
    "AsyncJob": "llm_router.broker.async_client",
    "Settings": "llm_router.broker.settings",
    "RouterError": "llm_router.tasks.errors",
    "InvalidRequest": "llm_router.tasks.errors",
    "ConfigurationError": "llm_router.tasks.errors",
    "SchemaNotCurrent": "llm_router.tasks.errors",
    "JobError": "llm_router.tasks.errors",
    "JobFailed": "llm_router.tasks.errors",
    "JobRejected": "llm_router.tasks.errors",
    "JobCancelled": "llm_router.tasks.errors",
    "JobExpired": "llm_router.tasks.errors",
    "JobTimeout": "llm_router.tasks.errors",
    "GenerateResult": "llm_router.tasks.schemas",
    "EmbedResult": "llm_router.tasks.schemas",
    "ClassifyResult": "llm_router.tasks.schemas",
    "JobStatus": "llm_router.tasks.records",
    "AttemptStatus": "llm_router.tasks.records",
}
__all__ = [
    "AsyncJob",
    "AsyncRouter",
    "AttemptStatus",
    "BatchSubmission",
    "ClassifyResult",
    "ConfigurationError",
    "EmbedResult",
    "EnqueueFailed",
    "GenerateResult",
    "InvalidRequest",
    "Job",
    "JobCancelled",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobRejected",
    "JobStatus",
    "JobTimeout",
    "Router",
    "RouterError",
    "SchemaNotCurrent",
    "Settings",
    "UnknownJob",
]

if TYPE_CHECKING:
    from llm_router.broker.async_client import AsyncJob, AsyncRouter
    from llm_router.broker.jobs import Job, UnknownJob
    from llm_router.broker.publishing import EnqueueFailed
    from llm_router.broker.router import Router
    from llm_router.broker.settings import Settings
    from llm_router.broker.submitting import BatchSubmission
    from llm_router.tasks.errors import (
        ConfigurationError,
        InvalidRequest,
        JobCancelled,
        JobError,
        JobExpired,
        JobFailed,
        JobRejected,
        JobTimeout,
        RouterError,
        SchemaNotCurrent,
    )
    from llm_router.tasks.records import AttemptStatus, JobStatus
    from llm_router.tasks.schemas import ClassifyResult, EmbedResult, GenerateResult


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-runner-router")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in ("app", "celery"):  # `celery -A llm_router worker` finds the app here
        return getattr(import_module("llm_router.broker"), name)
    raise AttributeError(f"module 'llm_router' has no attribute {name!r}")
