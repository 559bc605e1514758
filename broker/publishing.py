"""Publishing a recorded job's message: by the producer that records it, and again by whoever recovers it.

A job's message carries its id only (the request lives in the database) and, as a header, how many texts it
runs through the model, which the worker's dynamic batching counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import group

from llm_router.broker.catalogue import Catalogue
from llm_router.broker.packing import input_count
from llm_router.broker.queues import INPUTS_HEADER, TASK_NAMES, message_priority, queue_names
from llm_router.broker.redis_publish import TaskMessage
from llm_router.tasks.store import JobView


def send_job(
    app: Any, job_id: str, kind: str, queue: str, inputs: int, countdown: float = 0.0, priority: int | None = None
) -> None:
    """Publish one job's message on ``queue``; raises what the transport raises when it is refused."""
    priority = broker_priority(app, priority, queue)
    _send(app, TaskMessage(TASK_NAMES[kind], job_id, [job_id], {}, queue, inputs, priority), countdown)


def send_bulk(app: Any, job_ids: list[str], kind: str, queue: str, inputs: int) -> None:
    """Publish one bulk message for ``job_ids`` (the keyword ``job_ids``, its id the first job's and a count)."""
    task_id, priority = f"{job_ids[0]}+{len(job_ids) - 1}", broker_priority(app, None, queue)
    _send(app, TaskMessage(TASK_NAMES[kind], task_id, [], {"job_ids": job_ids}, queue, inputs, priority))


def _send(app: Any, message: TaskMessage, countdown: float = 0.0) -> None:
    """On Redis in one ``LPUSH`` (``llm_router.broker.redis_publish``); a countdown, or another broker, through
    Celery."""
    publisher = getattr(app, "redis_publisher", None)
    if publisher is not None and not countdown:
        publisher.send(message)
        return
    app.send_task(
        message.task_name,
        args=message.args,
        kwargs=message.kwargs,
        task_id=message.task_id,
        queue=message.queue,
        routing_key=message.queue,
        headers={INPUTS_HEADER: message.inputs},
        countdown=countdown or None,
        priority=message.priority,
    )


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
            headers={INPUTS_HEADER: job.inputs},
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
