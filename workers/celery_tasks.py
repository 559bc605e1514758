"""The Celery tasks ``llm_router.generate``, ``llm_router.embed`` and ``llm_router.classify`` (and, for one
release, the same under their former names ``tasks.generate`` …).

Each takes the job id (and, from hand-written producers, optionally the request). The body parses the
message and hands the job to ``llm_router.workers.execution``; a bad message is recorded and acknowledged, never
raised, so a worker keeps serving whatever arrives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from billiard import current_process
from celery import Task, shared_task, signals
from celery.worker.control import inspect_command
from redis.exceptions import RedisError

from llm_router.broker import tracing
from llm_router.broker.pipeline_runs import advance
from llm_router.broker.publishing import broker_priority
from llm_router.broker.queues import INPUTS_HEADER, LEGACY_TASK_NAMES, TASK_NAMES
from llm_router.broker.routing import lane_of, queue_for_tier
from llm_router.broker.submitting import Submitter
from llm_router.broker.transports import open_transport
from llm_router.tasks.records import JobStatus, Outcome
from llm_router.tasks.schemas import Kind
from llm_router.tasks.store import DATABASE_UNAVAILABLE, WebhookView
from llm_router.workers.draining import Drained, Drainer, Take, inputs_of, report
from llm_router.workers.execution import Reschedule, cause_of
from llm_router.workers.groups import inputs_per_call, run_jobs
from llm_router.workers.heartbeat import ServingHeartbeat
from llm_router.workers.interludes import interludes
from llm_router.workers.job_end import Ended, after_final, carry_pipelines_on, claim_webhooks
from llm_router.workers.log_limits import Throttle
from llm_router.workers.messages import BadBulkMessage, BadMessage, Cursor, JobMessage, parse_messages
from llm_router.workers.webhooks import LEGACY_WEBHOOK_TASK, WEBHOOK_TASK, Webhooks, webhook_task_id

if TYPE_CHECKING:
    from llm_router.workers.runtime import WorkerProfile, WorkerRuntime

log = logging.getLogger(__name__)
DB_RETRY_S = 5
OUTAGES = Throttle()  # an outage is logged once a minute, not once per message

# One runtime per process, keyed by pid so a forked child never reuses its parent's connections.
_runtimes: dict[int, WorkerRuntime] = {}
_building = threading.Lock()


def current_runtime(app: Any) -> WorkerRuntime:
    runtime = _runtimes.get(os.getpid())
    if runtime is not None:
        return runtime
    with _building:  # the threads of the remote pool share one runtime, built once
        runtime = _runtimes.get(os.getpid())
        if runtime is None:
            # Imported here: the Celery app loads this module in every process, and the runtime may bring torch.
            from llm_router.workers.runtime import WorkerProfile, build_runtime

            profile = getattr(app, "worker_profile", None) or WorkerProfile()
            tracing.configure(f"llm-router-worker-{profile.pool}", http_client_spans=True)  # before any client
            runtime = build_runtime(app.router_settings, app.catalogue, profile)
            runtime.step_ended = _pipeline_advancer(app, runtime)
            runtime.webhooks = _webhooks(app, runtime)
            runtime.end_hooks += [carry_pipelines_on(runtime.step_ended), claim_webhooks(runtime.webhooks)]
            _start_sweeper(app, runtime)
            _runtimes.clear()
            _runtimes[os.getpid()] = runtime
        return runtime


def _pipeline_advancer(app: Any, runtime: WorkerRuntime) -> Callable[[str], None]:
    submitter = Submitter(runtime.settings, runtime.catalogue, runtime.store, lambda: app)
    return lambda run_id: advance(submitter, run_id)


def _webhooks(app: Any, runtime: WorkerRuntime) -> Webhooks:
    def publish(webhook_id: str, queue: str | None, countdown: float) -> None:
        queue = queue or runtime.catalogue.ordered_tiers[0]
        app.send_task(
            WEBHOOK_TASK,
            kwargs={"webhook_id": webhook_id},
            task_id=webhook_task_id(webhook_id),
            queue=queue,
            routing_key=queue,
            countdown=countdown or None,
            priority=broker_priority(app, None, queue),
        )

    return Webhooks(runtime.store, runtime.settings, publish)


def _start_sweeper(app: Any, runtime: WorkerRuntime) -> None:
    """Every process that runs jobs keeps a sweeper; one at a time sweeps (workers.sweeper). It needs Redis
    for its lock: in the embedded mode, `llm-router requeue --stale` recovers jobs."""
    settings = runtime.settings
    if not settings.sweep_interval_s or not settings.resolved_redis_url:
        return
    import redis

    from llm_router.broker.publishing import recovery_queue, send_again
    from llm_router.broker.queues import queue_names
    from llm_router.broker.transports.redis import RedisTransport
    from llm_router.workers.broker_mark import BrokerMark
    from llm_router.workers.held_messages import HeldMessages
    from llm_router.workers.sweeper import Retain, Sweeper

    client = redis.Redis.from_url(settings.resolved_redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    broker = settings.resolved_broker_url
    on_redis = broker.startswith("redis")
    broker_client = redis.Redis.from_url(broker, socket_timeout=5.0) if on_redis else None
    held = HeldMessages(RedisTransport(broker_client)) if broker_client is not None else None
    Sweeper(
        runtime.store,
        client,
        lambda job, queue, countdown: send_again(app, job, queue, countdown),
        lambda job: recovery_queue(job, runtime.catalogue),
        interval_s=settings.sweep_interval_s,
        lost_message_after_s=settings.lost_message_after_s,
        broker_mark=BrokerMark(broker_client, runtime.store) if broker_client else None,
        held=held,
        held_after_s=settings.lease_s,
        queues=queue_names(runtime.catalogue.ordered_tiers),
        retention=Retain(settings.retention_days, settings.retention_results_only) if settings.retention_days else None,
        carry_on=runtime.step_ended,
        resend_webhook=_resend_webhook(runtime),
    ).start()


def _resend_webhook(runtime: WorkerRuntime) -> Callable[[WebhookView], None] | None:
    webhooks = runtime.webhooks
    return None if webhooks is None else lambda webhook: webhooks.publish(webhook.id, webhook.queue, 0.0)


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
        if OUTAGES.allows("database"):
            log.warning("database unavailable (%s); messages retried in %ss", type(exc).__name__, DB_RETRY_S)
        raise task.retry(countdown=DB_RETRY_S, max_retries=None) from None
    except RedisError as exc:
        # The shared store of rate limits and cooldowns is unreachable, or refuses writes (at its maxmemory):
        # without it the cluster cannot keep its limits (a provider's quota, a paid API), so the job waits for
        # it, like for the database.
        if OUTAGES.allows("shared state"):
            log.warning("rate-limit store unavailable (%s); messages retried in %ss", type(exc).__name__, DB_RETRY_S)
        raise task.retry(countdown=DB_RETRY_S, max_retries=None) from None
    except Exception as exc:
        return end_jobs_of_failed_message(current_runtime(task.app), kind, args, kwargs, exc)


def end_jobs_of_failed_message(
    runtime: WorkerRuntime, kind: Kind, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
) -> str:
    """A message whose handling raised (a bug, or a record the database refused): its jobs that are not final
    end ``failed`` with the cause, rather than stay queued or running under this live process's lease for
    ever. A job another process runs now is left to it."""
    log.exception("a %s message could not be handled; its unfinished jobs end failed", kind)
    try:
        job_ids = [message.job_id for message in parse_messages(args, kwargs)]
    except (BadMessage, BadBulkMessage):
        return Outcome.FAILED
    cause = f"internal error while running its message ({cause_of(exc)})"
    ended = runtime.store.fail(job_ids, cause, not_leased_by_others=runtime.lease.owner)
    after_final(runtime.end_hooks, [Ended(job_id, JobStatus.FAILED) for job_id in ended])
    return Outcome.FAILED


def _handle_message(task: JobTask, kind: Kind, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    runtime = current_runtime(task.app)
    messages = _parse(runtime, kind, args, kwargs)
    if isinstance(messages, str):
        return messages
    take = Take([])
    profile = runtime.profile
    lane = lane_of((task.request.delivery_info or {}).get("routing_key"))
    room = inputs_per_call(profile, kind, lane)
    in_hand = max(inputs_of({INPUTS_HEADER: getattr(task.request, INPUTS_HEADER, None)}), len(messages))
    # The remote pool sends the inputs of many embed or classify jobs in one HTTP call; generations there are
    # calls of their own, each in a slot of its own, so it takes no waiting message with them.
    tasks = None if profile.runs_models else REMOTE_BATCHED_TASKS
    if room > in_hand and task.request.delivery_info and (tasks is None or TASK_NAMES[kind] in tasks):
        # Dynamic batching: the jobs already waiting in this worker's queues join this one's model call.
        # An interactive job takes only interactive ones with it: bulk work must not lengthen its wait.
        queues = list(task.app.amqp.queues.consume_from or task.app.amqp.queues)
        if lane == "interactive":
            queues = [queue for queue in queues if lane_of(queue) == "interactive"]
        take = _drainer(task.app, profile).take(queues, room - in_hand, profile.max_wait_ms, tasks)
    drained = take.drained
    began = time.perf_counter()
    serve_waiting = _interactive_interlude(task, runtime) if lane == "bulk" and profile.runs_models else None
    carried = {name: getattr(task.request, name, None) for name in tracing.HEADERS}
    attributes = {"llm_router.kind": kind, "llm_router.queue": queue_of(task), "llm_router.jobs": len(messages)}
    try:
        with (
            tracing.span(
                "llm_router.message",
                attributes,
                parent=tracing.context_of(carried),
                links=[tracing.context_of(item.taken.headers) for item in drained],
            ),
            interludes(serve_waiting) if serve_waiting is not None else contextlib.nullcontext(),
        ):
            outcomes = run_messages(task.app, runtime, {kind: messages}, drained, task.request.hostname)
    except BaseException:
        take.give_back()
        raise
    finally:
        if runtime.registry.version != runtime.published_version:
            publish_state(runtime)
    take.ack()
    summary = summary_of(outcomes)
    report(task.app, drained, task.request.hostname, summary, time.perf_counter() - began)
    return summary


def run_messages(
    app: Any,
    runtime: WorkerRuntime,
    by_kind: dict[Kind, list[JobMessage]],
    drained: list[Drained],
    hostname: str | None,
) -> list[Outcome]:
    """Run the jobs of the message in hand (``by_kind``) and of the messages taken with it."""
    for item in drained:
        parsed = _parse(runtime, item.kind, item.args, item.kwargs)  # type: ignore[arg-type]
        if not isinstance(parsed, str):
            by_kind.setdefault(item.kind, []).extend(parsed)  # type: ignore[arg-type]
    outcomes: list[Outcome] = []
    # Each job's waiting callers are woken as soon as its final record is written (workers.execution).
    for each_kind, jobs in by_kind.items():
        outcomes += run_jobs(runtime, each_kind, jobs, hostname, rescheduler(app, each_kind))
    return outcomes


def queue_of(task: JobTask) -> str | None:
    queue = (task.request.delivery_info or {}).get("routing_key")
    return queue if isinstance(queue, str) else None


def summary_of(outcomes: list[Outcome]) -> str:
    if len(outcomes) == 1:
        return str(outcomes[0])
    return " ".join(f"{k}={v}" for k, v in sorted(Counter(outcomes).items()))


def _interactive_interlude(task: JobTask, runtime: WorkerRuntime) -> Callable[[], None] | None:
    """What a bulk model call runs between its passes on a worker that also serves interactive queues: the
    interactive jobs waiting there, taken and run at once (see ``llm_router.workers.interludes``)."""
    consumed = list(task.app.amqp.queues.consume_from or task.app.amqp.queues)
    queues = [queue for queue in consumed if lane_of(queue) == "interactive"]
    if not queues:
        return None
    profile, hostname = runtime.profile, task.request.hostname
    drainer = _drainer(task.app, profile)

    def serve_waiting() -> None:
        take = drainer.take(queues, profile.max_batch, 0.0)
        if not take.drained:
            take.ack()  # frees the connection
            return
        began = time.perf_counter()
        try:
            outcomes = run_messages(task.app, runtime, {}, take.drained, hostname)
        except Exception:  # the bulk call goes on; the broker hands these messages out again
            take.give_back()
            log.exception("interactive jobs taken between the passes of a bulk call failed; given back")
            return
        except BaseException:
            take.give_back()
            raise
        take.ack()
        summary = summary_of(outcomes)
        log.info("between the passes of a bulk call: %d interactive messages ran (%s)", len(take.drained), summary)
        report(task.app, take.drained, hostname, summary, time.perf_counter() - began)

    return serve_waiting


def _parse(runtime: WorkerRuntime, kind: Kind, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[JobMessage] | str:
    """The jobs of a message, or what became of a bad message (recorded rejected when it names jobs)."""
    try:
        return parse_messages(args, kwargs)
    except BadBulkMessage as exc:
        for job_id in exc.job_ids:
            runtime.store.reject(job_id, kind, f"bad message: {exc}")
        after_final(runtime.end_hooks, [Ended(job_id, JobStatus.REJECTED) for job_id in exc.job_ids])
        log.error("rejected a bulk %s message: %s", kind, exc)
        return Outcome.REJECTED
    except BadMessage as exc:
        if exc.job_id is not None:
            runtime.store.reject(exc.job_id, kind, f"bad message: {exc}")
            after_final(runtime.end_hooks, [Ended(exc.job_id, JobStatus.REJECTED)])
            return Outcome.REJECTED
        log.error("dropped a %s message that names no job: %s", kind, exc)
        return "dropped"


def rescheduler(app: Any, kind: Kind) -> Reschedule:
    def reschedule(job_id: str, queue: str, cursor: Cursor, delay_s: float, priority: int | None) -> None:
        # A new message with a countdown: the worker holds it without occupying an execution slot.
        app.send_task(
            TASK_NAMES[kind],
            kwargs={"job_id": job_id, "cursor": cursor.as_json()},
            countdown=delay_s,
            queue=queue,
            routing_key=queue,
            task_id=f"{job_id}:{cursor.position}.{cursor.retry}",
            priority=broker_priority(app, priority, queue),
            headers=tracing.carrier(),  # the retry's run continues the job's trace
        )

    return reschedule


_drainers: dict[int, Drainer] = {}
_drainers_lock = threading.Lock()
# Taking messages holds a broker connection from the take until its jobs are recorded: the remote pool keeps
# a few for its many threads, so that many batched HTTP calls are in flight at once.
REMOTE_DRAINING_CONNECTIONS = 8
REMOTE_BATCHED_TASKS = frozenset(
    names[kind] for names in (TASK_NAMES, LEGACY_TASK_NAMES) for kind in ("embed", "classify")
)


def _drainer(app: Any, profile: WorkerProfile) -> Drainer:
    with _drainers_lock:
        drainer = _drainers.get(id(app))
        if drainer is None:
            # A model pool's process takes with the message in hand, and between the passes of a bulk call.
            lines = 2 if profile.runs_models else REMOTE_DRAINING_CONNECTIONS
            drainer = _drainers[id(app)] = Drainer(partial(open_transport, app), lines)
        return drainer


def webhook(self: JobTask, *args: Any, **kwargs: Any) -> str:
    """One delivery of a completion webhook, handed to the process's sender (it returns at once: the slot is
    free for model jobs while the delivery waits on the network). Never raises for a bad message: it is logged
    and dropped."""
    webhook_id = kwargs.get("webhook_id")
    if not isinstance(webhook_id, str) or args:
        log.error("dropped a webhook message without a webhook id")
        return "dropped"
    try:
        runtime = current_runtime(self.app)
        assert runtime.webhooks is not None
        return runtime.webhooks.dispatch(webhook_id)
    except DATABASE_UNAVAILABLE:
        raise self.retry(countdown=DB_RETRY_S, max_retries=None) from None


def _job_task(kind: Kind) -> Callable[..., str]:
    def run(self: JobTask, *args: Any, **kwargs: Any) -> str:
        return _handle(self, kind, args, kwargs)

    run.__name__ = run.__qualname__ = kind
    return run


# Each task under its name, and under the one it had before the package was llm_router (kept for one release:
# messages queued by an older producer still run).
for _name in (WEBHOOK_TASK, LEGACY_WEBHOOK_TASK):
    shared_task(bind=True, base=JobTask, name=_name)(webhook)
for _kind in ("generate", "embed", "classify"):
    for _name in (TASK_NAMES[_kind], LEGACY_TASK_NAMES[_kind]):
        shared_task(bind=True, base=JobTask, name=_name)(_job_task(_kind))  # type: ignore[arg-type]


# The process whose folder this one's state goes to, when it is not Celery's (the remote pool's event loops).
_state_owner: dict[str, int] = {}


def report_state_to(main_pid: int) -> None:
    _state_owner["pid"] = main_pid


def _main_pid() -> int:
    if "pid" in _state_owner:
        return _state_owner["pid"]
    # Prefork children report to their parent; the solo and thread pools run jobs in the main process.
    return os.getpid() if current_process().name == "MainProcess" else os.getppid()


def publish_state(runtime: WorkerRuntime, in_flight: int | None = None, listed: dict[str, Any] | None = None) -> None:
    from llm_router.workers.state import publish

    profile = runtime.profile
    publish(
        _main_pid(),
        {
            "pool": profile.pool,
            "device": runtime.registry.device,
            "quantize": profile.quantize,
            "torch_threads": profile.torch_threads,
            "concurrency": profile.concurrency,
            "torch_loaded": "torch" in sys.modules,
            "models": [m.describe() for m in runtime.registry.loaded()],
            **({} if in_flight is None else {"in_flight": in_flight}),
            **(listed or {}),
        },
    )
    runtime.published_version = runtime.registry.version


def preload(app: Any) -> None:
    runtime = current_runtime(app)
    queues = set(app.amqp.queues.consume_from or app.amqp.queues)
    tiers = [tier for tier in runtime.catalogue.ordered_tiers if queues & {tier, queue_for_tier(tier, "bulk")}]
    models = runtime.catalogue.models_of_tiers(tiers) if runtime.profile.runs_models else []
    problems = runtime.registry.preload(models)
    for problem in problems:
        log.error("preload: %s", problem)
    publish_state(runtime)
    redis_url = runtime.settings.resolved_redis_url
    if redis_url:  # producers learn that these queues have a consumer (broker.consumers)
        ServingHeartbeat(redis_url, sorted(queues), runtime.lease.owner).start()
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
    """Remote control: this worker's queues, its jobs in flight (the messages its pool runs now, whatever the
    pool), and per process its device, loaded models and memory."""
    from celery.worker import state as worker_state

    from llm_router.workers.state import collect

    consumer = state.consumer
    queues = sorted(queue.name for queue in consumer.task_consumer.queues) if consumer.task_consumer else []
    return {"queues": queues, "in_flight": len(worker_state.active_requests), "processes": collect(os.getpid())}


# Lines a job would otherwise log at INFO besides its own (workers.execution: what became of it, where, in
# how long): Celery's "received" and "succeeded in" lines and httpx's line per request, three more a job.
PER_JOB_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "httpx")


@signals.after_setup_logger.connect
def _one_line_per_job(loglevel: int | str | None = None, **_: Any) -> None:
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    if isinstance(level, int) and level <= logging.DEBUG:
        return  # asked for everything
    for name in PER_JOB_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@signals.worker_init.connect
def _clear_earlier_state(**_: Any) -> None:
    # The main process, before its pool starts: what a killed worker of the same pid left is not ours.
    from llm_router.workers.state import clear

    clear(os.getpid())


@signals.worker_process_init.connect
def _preload_in_child(**_: Any) -> None:
    from celery import current_app

    preload(current_app)


@signals.worker_ready.connect
def _preload_in_thread_pool(sender: Any = None, **_: Any) -> None:
    # Prefork children and the solo pool send worker_process_init; the thread pool sends nothing.
    pool_module = type(getattr(sender, "pool", None)).__module__
    if sender is not None and pool_module.rsplit(".", 1)[-1] == "thread":
        preload(sender.app)
