"""The Celery tasks ``tasks.generate``, ``tasks.embed`` and ``tasks.classify``.

Each takes the job id (and, from hand-written producers, optionally the request). The body parses the
message and hands the job to ``tasks.execution``; a bad message is recorded and acknowledged, never
raised, so a worker keeps serving whatever arrives.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from billiard import current_process
from celery import Task, shared_task, signals
from celery.worker.control import inspect_command

from tasks.execution import run_job
from tasks.messages import BadMessage, Cursor, parse_message
from tasks.repository import DATABASE_UNAVAILABLE
from tasks.schemas import Kind

log = logging.getLogger(__name__)
DB_RETRY_S = 5

# One runtime per process, keyed by pid so a forked child never reuses its parent's connections.
_runtimes: dict[int, Any] = {}


def current_runtime(app: Any) -> Any:
    runtime = _runtimes.get(os.getpid())
    if runtime is None:
        from workers.runtime import WorkerProfile, build_runtime

        profile = getattr(app, "worker_profile", None) or WorkerProfile()
        runtime = build_runtime(app.router_settings, app.catalogue, profile)
        _runtimes.clear()
        _runtimes[os.getpid()] = runtime
    return runtime


class JobTask(Task):  # type: ignore[misc]
    typing = False  # arguments are checked by parse_message, not by Celery's signature check
    acks_late = True
    reject_on_worker_lost = True


def _handle(task: JobTask, kind: Kind, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    try:
        return _handle_message(task, kind, args, kwargs)
    except DATABASE_UNAVAILABLE as exc:
        # The database is down or restarting: hand the same message back with a countdown, so nothing
        # is lost and no worker slot waits. The job row is written once the database answers again.
        log.warning("database unavailable (%s); %s message retried in %ss", type(exc).__name__, kind, DB_RETRY_S)
        raise task.retry(countdown=DB_RETRY_S, max_retries=None) from None


def _handle_message(task: JobTask, kind: Kind, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    try:
        message = parse_message(args, kwargs)
    except BadMessage as exc:
        if exc.job_id is not None:
            current_runtime(task.app).store.reject(exc.job_id, kind, f"bad message: {exc}")
            return "rejected"
        log.error("dropped a %s message that names no job: %s", kind, exc)
        return "dropped"

    def reschedule(job_id: str, queue: str, cursor: Cursor, delay_s: float) -> None:
        # A new message with a countdown: the worker holds it without occupying an execution slot.
        task.apply_async(
            kwargs={"job_id": job_id, "cursor": cursor.as_json()},
            countdown=delay_s,
            queue=queue,
            routing_key=queue,
            task_id=f"{job_id}:{cursor.position}.{cursor.retry}",
        )

    runtime = current_runtime(task.app)
    try:
        return run_job(runtime, kind, message, task.request.hostname, reschedule)
    finally:
        if runtime.registry.version != runtime.published_version:
            publish_state(runtime)


@shared_task(bind=True, base=JobTask, name="tasks.generate")
def generate(self: JobTask, *args: Any, **kwargs: Any) -> str:
    return _handle(self, "generate", args, kwargs)


@shared_task(bind=True, base=JobTask, name="tasks.embed")
def embed(self: JobTask, *args: Any, **kwargs: Any) -> str:
    return _handle(self, "embed", args, kwargs)


@shared_task(bind=True, base=JobTask, name="tasks.classify")
def classify(self: JobTask, *args: Any, **kwargs: Any) -> str:
    return _handle(self, "classify", args, kwargs)


def _main_pid() -> int:
    # Prefork children report to their parent; the solo and thread pools run jobs in the main process.
    return os.getpid() if current_process().name == "MainProcess" else os.getppid()


def publish_state(runtime: Any) -> None:
    from workers.state import publish

    profile = runtime.profile
    publish(
        _main_pid(),
        {
            "pool": profile.pool,
            "device": runtime.registry.device,
            "quantize": profile.quantize,
            "torch_threads": profile.torch_threads,
            "models": [m.describe() for m in runtime.registry.loaded()],
        },
    )
    runtime.published_version = runtime.registry.version


def _preload(app: Any) -> None:
    runtime = current_runtime(app)
    queues = set(app.amqp.queues.consume_from or app.amqp.queues)
    tiers = [tier for tier in runtime.catalogue.ordered_tiers if tier in queues]
    problems = runtime.registry.preload(runtime.catalogue.models_of_tiers(tiers))
    for problem in problems:
        log.error("preload: %s", problem)
    publish_state(runtime)
    loaded = ", ".join(
        f"{m.model_id} ({m.load_s:.1f}s, {m.size_bytes / 2**20:.0f} MB)" for m in runtime.registry.loaded()
    )
    log.info(
        "ready: tiers=%s device=%s quantize=%s models=%s",
        ",".join(tiers),
        runtime.registry.device,
        runtime.profile.quantize,
        loaded or "none",
    )


@inspect_command()  # type: ignore[misc]
def llm_router_info(state: Any) -> dict[str, Any]:
    """Remote control: this worker's queues and, per process, its device, loaded models and memory."""
    from workers.state import collect

    consumer = state.consumer
    queues = sorted(queue.name for queue in consumer.task_consumer.queues) if consumer.task_consumer else []
    return {"queues": queues, "processes": collect(os.getpid())}


@signals.worker_process_init.connect
def _preload_in_child(**_: Any) -> None:
    from celery import current_app

    _preload(current_app)


@signals.worker_ready.connect
def _preload_in_thread_pool(sender: Any = None, **_: Any) -> None:
    # Prefork children and the solo pool send worker_process_init; the thread pool sends nothing.
    pool_module = type(getattr(sender, "pool", None)).__module__
    if sender is not None and pool_module.rsplit(".", 1)[-1] == "thread":
        _preload(sender.app)
