"""Publishing a recorded job's message: by the producer that records it, and again by whoever recovers it.

A job's message carries its id only (the request lives in the database) and, as a header, how many texts it
runs through the model, which the worker's dynamic batching counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import group

from llm_router.broker.catalogue import Catalogue
from llm_router.broker.packing import input_count
from llm_router.broker.queues import INPUTS_HEADER, TASK_NAMES, message_priority, queue_names
from llm_router.broker.tracing import carrier
from llm_router.broker.transports import TaskMessage
from llm_router.broker.transports.kombu_channel import send_through_celery
from llm_router.tasks.errors import RouterError
from llm_router.tasks.store import JobStore, JobView


def send_job(
    app: Any, job_id: str, kind: str, queue: str, inputs: int, countdown: float = 0.0, priority: int | None = None
) -> None:
    """Publish one job's message on ``queue``; raises what the transport raises when it is refused."""
    priority = broker_priority(app, priority, queue)
    message = TaskMessage(TASK_NAMES[kind], job_id, [job_id], {}, queue, inputs, priority, carrier())
    _send(app, message, countdown)


def send_bulk(app: Any, job_ids: list[str], kind: str, queue: str, inputs: int) -> None:
    """Publish one bulk message for ``job_ids`` (the keyword ``job_ids``, its id the first job's and a count)."""
    task_id, priority = f"{job_ids[0]}+{len(job_ids) - 1}", broker_priority(app, None, queue)
    _send(app, TaskMessage(TASK_NAMES[kind], task_id, [], {"job_ids": job_ids}, queue, inputs, priority, carrier()))


def _send(app: Any, message: TaskMessage, countdown: float = 0.0) -> None:
    """On Redis in one ``LPUSH`` (``llm_router.broker.transports.redis``); a countdown, or another broker,
    through Celery."""
    publisher = getattr(app, "publisher", None)
    if publisher is not None and not countdown:
        publisher.publish(message)
        return
    send_through_celery(app, message, countdown)


def broker_priority(app: Any, priority: int | None, queue: str) -> int | None:
    """The priority of a message to ``queue`` for a job of ``priority``, on ``app``'s broker."""
    return message_priority(priority, queue, app.conf.broker_url or "")


@dataclass(frozen=True)
class Outgoing:
    job_id: str
    kind: str
    queue: str
    inputs: int


def send_together(app: Any, jobs: list[Outgoing]) -> None:
    """Publish the messages of jobs that belong together (a comparison's models) as one Celery group, each on
    its own queue: they run at once across the pools, each a job of its own."""
    signatures = [
        app.signature(
            TASK_NAMES[job.kind],
            args=[job.job_id],
            task_id=job.job_id,
            queue=job.queue,
            routing_key=job.queue,
            headers={**carrier(), INPUTS_HEADER: job.inputs},
            priority=broker_priority(app, None, job.queue),
        )
        for job in jobs
    ]
    group(signatures).apply_async()


def send_again(app: Any, job: JobView, queue: str, countdown: float = 0.0) -> None:
    """Publish a recorded job's message again (a requeue, a recovery)."""
    request = job.request or {}
    send_job(app, job.id, job.kind, queue, input_count(request), countdown, request.get("priority"))


def recovery_queue(job: JobView, catalogue: Catalogue) -> str | None:
    """The queue a lost job goes back to; None when no tier of ``catalogue`` serves it (renamed or removed),
    where no worker would ever take it."""
    queue = job.queue or job.tier or catalogue.ordered_tiers[0]
    return queue if queue in queue_names(catalogue.ordered_tiers) else None


class EnqueueFailed(RouterError):
    """The job was recorded but the broker refused it; the job is marked failed with this reason."""


@dataclass(frozen=True)
class Requeue:
    requeued: list[JobView]  # published again (or, in a dry run, that would be)
    unroutable: list[JobView]  # lost, but on a queue this catalogue no longer serves: left for an operator


def requeue_stale(
    app: Any, store: JobStore, catalogue: Catalogue, older_than_s: float, *, dry_run: bool = False
) -> Requeue:
    """Publish again every job that is lost since ``older_than_s`` at least: running under a lease its
    worker stopped renewing (it died), or queued or retrying with its message due that long ago (a broker
    lost it). The database is the source of truth. A job that a live worker runs, or that waits for a
    retry's or deferral's countdown, is left alone; a job that ends meanwhile is not run twice: a worker
    skips a message for a job in a final state or under another live worker's lease. A job whose queue
    this catalogue does not serve (its tier was renamed or removed) is reported, not published: no
    worker would ever take it."""
    requeued: list[JobView] = []
    unroutable: list[JobView] = []
    # Leases and due times are the database clock's: judged by it, whatever this host's clock says.
    for job in store.stale(store.database_now() - timedelta(seconds=older_than_s)):
        queue = recovery_queue(job, catalogue)
        if queue is None:
            unroutable.append(job)
            continue
        requeued.append(job)
        if dry_run:
            continue
        try:
            send_again(app, job, queue)
        except Exception as exc:
            store.defer([done.id for done in requeued[:-1]], 0.0)
            raise EnqueueFailed(
                f"job {job.id} could not be enqueued on {app.router_settings.safe_broker_url()}"
            ) from exc
    if not dry_run:
        store.defer([job.id for job in requeued], 0.0)  # due now: the next requeue leaves them be
    return Requeue(requeued, unroutable)
