"""The producer client that web backends import: ``Router`` submits jobs, ``Job`` follows one
(``llm_router.broker.async_client`` has the asyncio pair). Nothing here imports torch or transformers."""

from llm_router.broker.jobs import Job, Result, UnknownJob, cancel_jobs
from llm_router.broker.publishing import EnqueueFailed, Requeue
from llm_router.broker.router import Router
from llm_router.broker.submitting import BatchSubmission

__all__ = ["BatchSubmission", "EnqueueFailed", "Job", "Requeue", "Result", "Router", "UnknownJob", "cancel_jobs"]
