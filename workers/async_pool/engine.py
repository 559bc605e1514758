"""The event loop of one remote-pool process: take, start, call, record, acknowledge (see the package's
docstring for what runs where).

Three threads serve the loop so that it never waits on a socket of its own: the broker connection (one
thread: a transport is used by one thread at a time), the records (database and Redis writes, a take's or a
flush's at once) and the threads' path. The loop's own work per job is its HTTP call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from llm_router.broker import tracing
from llm_router.broker.queues import KIND_OF_TASK
from llm_router.broker.routing import lane_of
from llm_router.broker.transports import Taken, Transport, direct_redis, open_transport
from llm_router.tasks.schemas import GenerateResult, Usage
from llm_router.workers.async_pool.caller import AsyncCaller
from llm_router.workers.async_pool.control import listed_tasks
from llm_router.workers.async_pool.recording import Answered, record_answers
from llm_router.workers.async_pool.starting import Call, Running, start_jobs
from llm_router.workers.async_pool.wakes import Wakes
from llm_router.workers.backends.base import Result
from llm_router.workers.celery_tasks import (
    REMOTE_BATCHED_TASKS,
    end_jobs_of_failed_message,
    publish_state,
    rescheduler,
    run_messages,
    summary_of,
)
from llm_router.workers.draining import Drained, inputs_of, report, seconds_until_due, task_body
from llm_router.workers.execution import (
    INFRASTRUCTURE,
    cause_of,
    go_on_after_failure,
)
from llm_router.workers.log_limits import Throttle
from llm_router.workers.webhooks import LEGACY_WEBHOOK_TASK, WEBHOOK_TASK

if TYPE_CHECKING:
    from llm_router.workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)
T = TypeVar("T")

FLUSH_S = 0.005  # answers that came within 5 ms are recorded in one statement
FLUSH_MAX = 512  # or as soon as this many wait, or every message in flight has its answer
# An empty take waits for a wake (a message published on a Redis broker) or 50 ms; where no wake comes (another
# broker, or the wakes' subscription down) 1 ms, doubling to 50 ms while the queues stay empty.
IDLE_FIRST_S, IDLE_MOST_S = 0.001, 0.05
GATHER_S = 0.005  # with calls in flight, a take that found fewer messages than room waits this long before the next
JOB_THREADS = 16  # the threads' path: retries, fallbacks, streams, bulk and bad messages, webhooks
OUTAGE_WAIT_S = 5.0  # a message whose jobs could not be recorded (database, Redis or broker away) waits this long
STOP_GRACE_S = 30.0  # how long a stopping process lets its calls in flight end
PUBLISH_S = 0.5  # how often the process's state (its messages in flight) is written
OUTAGES = Throttle()
WEBHOOK_TASKS = frozenset({WEBHOOK_TASK, LEGACY_WEBHOOK_TASK})


class Engine:
    """Runs the jobs of ``queues`` on the running event loop, up to ``concurrency`` messages at once."""

    def __init__(
        self,
        app: Any,
        runtime: WorkerRuntime,
        queues: list[str],
        concurrency: int,
        hostname: str,
        on_ready: Callable[[], None] = lambda: None,
    ):
        self.app, self.runtime, self.queues, self._on_ready = app, runtime, queues, on_ready
        self.concurrency, self.hostname = concurrency, hostname
        self.in_flight = 0  # messages taken and not yet settled
        self._transport: Transport | None = None
        self._broker = ThreadPoolExecutor(1, thread_name_prefix="llm-router-broker")
        self._records = ThreadPoolExecutor(2, thread_name_prefix="llm-router-records")
        self._threads = ThreadPoolExecutor(JOB_THREADS, thread_name_prefix="llm-router-job")
        self._answered: list[Answered] = []
        self._calls: dict[str, asyncio.Task[None]] = {}  # a generation's call, by job id: a cancel closes it
        self._tasks: set[asyncio.Task[Any]] = set()
        self._held: dict[str, Taken] = {}  # messages waiting for their ETA, by tag
        self._active: dict[str, tuple[Drained, float]] = {}  # messages being run and since when, by tag
        self._stopping = False
        self._last_flush = False

    # -- the loop -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Take and run jobs until ``stop``; then let the calls in flight end (``STOP_GRACE_S`` at most)."""
        self._loop = asyncio.get_running_loop()
        self._room, self._flush_now, self._stop_asked = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._wakes = Wakes()  # a message was published on our queues, or we stop
        self._caller = AsyncCaller(self.runtime.settings.request_timeout_s, self.concurrency)
        self.runtime.cancels.on_heard(self._heard_cancel)
        flusher = asyncio.create_task(self._flush_forever())
        self._spawn(self._publish_forever())
        if direct_redis(self.app):
            self._spawn(self._wakes.listen(self.app.conf.broker_url, self.queues))
        idle, ready = 0.0, False
        while not self._stopping:
            room = self.concurrency - self.in_flight
            if room <= 0:
                self._room.clear()
                await self._wait_or_stop(self._room)
                continue
            self._wakes.event.clear()  # a message published from now on wakes an idle wait below
            try:
                taken = await self._on(self._broker, self._take, room)
            except Exception as exc:  # the transports raise many kinds; all mean "the broker is away or full"
                if OUTAGES.allows("broker"):
                    log.error("cannot take messages: the broker refuses them (%s); trying again", cause_of(exc))
                await self._on(self._broker, self._reset_transport)
                await self._sleep_or_stop(1.0)
                continue
            if not ready:  # the broker answers a take (at its maxmemory, a Redis refuses one: it writes)
                ready = True
                await self._safely("saying this worker is ready", self._on_ready)
            if not taken:
                # Woken by publishers, the loop takes again only after the longest wait (in case a wake is lost).
                idle = IDLE_MOST_S if self._wakes.heard else min(IDLE_MOST_S, idle * 2 or IDLE_FIRST_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakes.event.wait(), idle)
                continue
            idle, busy = 0.0, self.in_flight > 0
            self.in_flight += len(taken)
            self._spawn(self._serve(taken))
            if busy and len(taken) < room:  # messages come one by one: let some gather for one take
                await self._sleep_or_stop(GATHER_S)
        await self._wind_down(flusher)

    def stop(self) -> None:
        """Stop taking messages (thread-safe: a signal handler's)."""
        loop = getattr(self, "_loop", None)
        if loop is None:
            self._stopping = True  # before the loop ran: it never takes anything
        else:
            loop.call_soon_threadsafe(self._begin_stop)

    def _begin_stop(self) -> None:
        self._stopping = True
        self._stop_asked.set()
        self._wakes.set()

    async def _wind_down(self, flusher: asyncio.Task[None]) -> None:
        held = list(self._held.values())
        self._held.clear()
        await self._settle(held, "give_back")  # due later: another process holds them meanwhile
        deadline = time.monotonic() + STOP_GRACE_S
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning("stopping with %d messages in flight: the broker hands them out again", self.in_flight)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._last_flush = True  # the flusher records what the cancelled calls left, then ends
        self._flush_now.set()
        await flusher
        await self._caller.close()
        await self._on(self._broker, self._reset_transport)
        for pool in (self._broker, self._records, self._threads):
            pool.shutdown(wait=False, cancel_futures=True)

    async def _wait_or_stop(self, event: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stop_asked.wait())]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiting in pending:
            waiting.cancel()

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_asked.wait(), seconds)

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _on(self, pool: ThreadPoolExecutor, work: Callable[..., T], *args: Any) -> T:
        return await self._loop.run_in_executor(pool, partial(work, *args))

    def _settled(self, tags: list[str]) -> None:
        """Messages no longer in flight (acknowledged, given back, or held for their countdown)."""
        self.in_flight -= len(tags)
        for tag in tags:
            self._active.pop(tag, None)
        self._room.set()

    # -- the broker -----------------------------------------------------------------------------------------

    def _connected(self) -> Transport:
        if self._transport is None:
            transport = open_transport(self.app)
            transport.declare(self.queues)  # this loop may start before any producer has sent to them
            self._transport = transport
        return self._transport

    def _take(self, room: int) -> list[Taken]:
        """Up to ``room`` messages; with embed or classify messages among them, the ones of those kinds that wait
        right behind them too, up to ``max_batch`` inputs each (dynamic batching: their inputs travel in few
        calls). Interactive ones take only interactive ones with them: bulk work must not lengthen their wait."""
        transport = self._connected()
        taken = transport.take(self.queues, room)
        while taken and not transport.takes_many and len(taken) < room:  # one message a round trip (basic_get)
            next_ones = transport.take(self.queues, room - len(taken))
            if not next_ones:
                break
            taken += next_ones
        batched = [message for message in taken if message.task in REMOTE_BATCHED_TASKS]
        inputs = self.runtime.profile.max_batch * len(batched) - sum(inputs_of(m.headers) for m in batched)
        if inputs > 0:
            interactive = any(lane_of(message.queue) == "interactive" for message in batched)
            queues = [queue for queue in self.queues if not interactive or lane_of(queue) == "interactive"]
            taken += transport.take(queues, inputs, REMOTE_BATCHED_TASKS)
        return taken

    def _reset_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            try:
                transport.close()
            except Exception:  # already broken: nothing left to release
                log.debug("closing a broken broker connection failed", exc_info=True)

    async def _settle(self, taken: list[Taken], how: str) -> None:
        """Acknowledge or give back messages. A broker connection lost meanwhile has already handed them back
        (or the sweeper will); their redelivery finds their jobs final, so this only logs."""
        if not taken:
            return
        try:
            await self._on(self._broker, lambda: getattr(self._connected(), how)(taken))
        except Exception as exc:
            log.warning("could not %s %d messages (%s)", how.replace("_", " "), len(taken), type(exc).__name__)
            await self._on(self._broker, self._reset_transport)

    def _hold(self, messages: list[Taken], seconds: float) -> None:
        """Keep messages unacknowledged until they are due (a retry's countdown), out of the room's count."""
        for message in messages:
            self._held[message.tag] = message
        self._settled([message.tag for message in messages])
        self._loop.call_later(seconds, self._due, [m.tag for m in messages])

    def _due(self, tags: list[str]) -> None:
        messages = [self._held.pop(tag) for tag in tags if tag in self._held]
        if messages and not self._stopping:
            self.in_flight += len(messages)
            self._spawn(self._serve(messages))

    async def _give_back_later(self, items: list[Drained]) -> None:
        """Messages whose jobs met an outage: handed back to their queues once it may have passed."""
        self._settled([item.taken.tag for item in items])
        await asyncio.sleep(OUTAGE_WAIT_S)
        await self._settle([item.taken for item in items], "give_back")

    # -- a take ---------------------------------------------------------------------------------------------

    async def _serve(self, taken: list[Taken]) -> None:
        now_due: list[Taken] = []
        later: dict[float, list[Taken]] = defaultdict(list)
        for message in taken:
            wait_s = seconds_until_due(message.headers)
            (later[round(wait_s, 2)] if wait_s > 0 else now_due).append(message)
        for wait_s, messages in later.items():
            self._hold(messages, wait_s)
        items = [item for item in map(self._decoded, now_due) if item is not None]
        began = time.time()
        self._active.update((item.taken.tag, (item, began)) for item in items)
        refused = [message for message in now_due if message.tag not in {item.taken.tag for item in items}]
        if refused:
            await self._settle(refused, "ack")  # what Celery does with content it refuses
            self._settled([message.tag for message in refused])
        if not items:
            return
        try:
            started, elsewhere = await self._on(self._records, start_jobs, self.runtime, self.hostname, items)
        except Exception as exc:
            if not isinstance(exc, INFRASTRUCTURE):
                log.exception("%d messages could not start; handed back in %ss", len(items), OUTAGE_WAIT_S)
            elif OUTAGES.allows("records"):
                log.warning("jobs cannot start: %s unavailable; messages handed back in %ss", exc, OUTAGE_WAIT_S)
            await self._give_back_later(items)
            return
        for call in started:
            task = self._spawn(self._call(call))
            if call.cancellable:
                self._calls[call.jobs[0].job.id] = task
        for item in elsewhere:
            self._spawn(self._on_threads(item))

    def _decoded(self, message: Taken) -> Drained | None:
        name = message.task
        body = task_body(message)
        kind = KIND_OF_TASK.get(name) or ("webhook" if name in WEBHOOK_TASKS else None)
        if body is None or kind is None:
            log.error("refusing a message of task %r that is not one of our JSON task messages", name)
            return None
        task_id = message.headers.get("id")
        return Drained(kind, tuple(body[0]), body[1], task_id if isinstance(task_id, str) else None, message, name)

    # -- a job's call ---------------------------------------------------------------------------------------

    async def _call(self, call: Call) -> None:
        began = time.perf_counter()
        try:
            results = await self._caller.run(call.caller, call.planned)
        except asyncio.CancelledError:
            if self._stopping:
                raise
            results = [self._stopped(call.jobs[0])]  # its caller cancelled it: the call is closed, nothing came
        except Exception as exc:
            self._calls.pop(call.jobs[0].job.id, None)
            latency_ms = (time.perf_counter() - began) * 1000.0
            await asyncio.gather(*(self._carry_on(running, exc, latency_ms) for running in call.jobs))
            return
        self._calls.pop(call.jobs[0].job.id, None)
        latency_ms = (time.perf_counter() - began) * 1000.0
        self._answered += [
            Answered(running, result, latency_ms) for running, result in zip(call.jobs, results, strict=True)
        ]
        if len(self._answered) >= min(FLUSH_MAX, self.in_flight):  # a full batch, or nothing else to wait for
            self._flush_now.set()

    @staticmethod
    def _stopped(running: Running) -> Result:
        return GenerateResult(text="", model=running.spec.model, usage=Usage.of(0, 0), finish_reason="stop")

    def _heard_cancel(self, job_ids: list[str]) -> None:
        """In the cancel listener's thread: the loop closes these jobs' calls."""
        self._loop.call_soon_threadsafe(self._cancel, job_ids)

    def _cancel(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            call = self._calls.pop(job_id, None)
            if call is not None:
                call.cancel()

    async def _carry_on(self, running: Running, failure: Exception, latency_ms: float) -> None:
        """A failed call: the threads' path records it and carries out the policy's decision."""
        item, run = running.item, running.run
        carry_on = partial(
            go_on_after_failure,
            self.runtime,
            running.job,
            run.request,
            run.route,
            self.hostname,
            rescheduler(self.app, item.kind),  # type: ignore[arg-type]
            (running.number, failure, latency_ms),
        )
        try:
            await self._on(self._threads, carry_on)
        except INFRASTRUCTURE:
            self.runtime.running.release([running.job.id])
            await self._give_back_later([item])
            return
        except Exception as exc:
            await self._on(
                self._threads, end_jobs_of_failed_message, self.runtime, item.kind, item.args, item.kwargs, exc
            )
        self.runtime.running.release([running.job.id])
        await self._settle([item.taken], "ack")
        self._settled([item.taken.tag])

    # -- the threads' path ----------------------------------------------------------------------------------

    async def _on_threads(self, item: Drained) -> None:
        began = time.perf_counter()
        try:
            summary = await self._on(self._threads, self._run_on_thread, item)
        except INFRASTRUCTURE as exc:
            if OUTAGES.allows("threads"):
                log.warning("a message could not run: %s unavailable; handed back in %ss", exc, OUTAGE_WAIT_S)
            await self._give_back_later([item])
            return
        await self._settle([item.taken], "ack")
        self._settled([item.taken.tag])
        await self._on(self._broker, report, self.app, [item], self.hostname, summary, time.perf_counter() - began)

    def _run_on_thread(self, item: Drained) -> str:
        runtime = self.runtime
        if item.kind == "webhook":
            webhook_id = item.kwargs.get("webhook_id")
            if not isinstance(webhook_id, str) or runtime.webhooks is None:
                log.error("dropped a webhook message without a webhook id")
                return "dropped"
            return runtime.webhooks.dispatch(webhook_id)
        jobs = item.kwargs.get("job_ids")
        attributes = {
            "llm_router.kind": item.kind,
            "llm_router.queue": item.taken.queue,
            "llm_router.jobs": len(jobs) if isinstance(jobs, list) else 1,
        }
        try:
            with tracing.span("llm_router.message", attributes, parent=tracing.context_of(item.taken.headers)):
                return summary_of(run_messages(self.app, runtime, {}, [item], self.hostname))
        except INFRASTRUCTURE:
            raise
        except Exception as exc:
            return end_jobs_of_failed_message(runtime, item.kind, item.args, item.kwargs, exc)  # type: ignore[arg-type]

    async def _publish_forever(self) -> None:
        """This process's state with its messages in flight, for ``llm_router_info`` and ``llm-router status``."""
        while not self._stopping:
            listed = listed_tasks(list(self._active.values()), list(self._held.values()), self.hostname)
            await self._safely("publishing this process's state", publish_state, self.runtime, self.in_flight, listed)
            await self._sleep_or_stop(PUBLISH_S)

    async def _safely(self, doing: str, work: Callable[..., Any], *args: Any) -> None:
        """Side work in the records thread whose failure must not stop the loop: logged, once a minute."""
        try:
            await self._on(self._records, work, *args)
        except Exception as exc:
            if OUTAGES.allows(doing):
                log.warning("%s failed (%s)", doing, cause_of(exc))

    # -- records --------------------------------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        # Ended by _last_flush, never cancelled: a cancel that meets wait_for's wake-up is lost (python/cpython#86296).
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), FLUSH_S)
            self._flush_now.clear()
            if self._answered:
                batch, self._answered = self._answered, []
                await self._flush(batch)
            if self._last_flush:
                return

    async def _flush(self, batch: list[Answered]) -> None:
        """Record answers together, then acknowledge their messages: never before the records commit."""
        began = time.perf_counter()
        items = [answered.running.item for answered in batch]
        try:
            await self._on(self._records, record_answers, self.runtime, batch)
        except Exception as exc:
            if not isinstance(exc, INFRASTRUCTURE):
                log.exception("answers of %d jobs not recorded; their messages are handed back", len(batch))
            elif OUTAGES.allows("flush"):
                log.warning("answers not recorded: %s unavailable; messages handed back in %ss", exc, OUTAGE_WAIT_S)
            # Their redelivery runs them again here (this process's lease is theirs), or finds them final.
            self.runtime.running.release([answered.running.job.id for answered in batch])
            await self._give_back_later(items)
            return
        await self._settle([item.taken for item in items], "ack")
        self._settled([item.taken.tag for item in items])
        report_ = partial(report, self.app, items, self.hostname, "succeeded", time.perf_counter() - began)
        self._spawn(self._on(self._broker, report_))
