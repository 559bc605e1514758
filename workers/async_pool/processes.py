"""The remote pool's processes: one event loop each (``Engine``), ``--processes`` of them, watched by the
process that started them (one that dies is started again; SIGTERM or SIGINT stops them all, each letting
its calls in flight end)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import time
from typing import Any

from llm_router.workers.pools import PoolPlan

log = logging.getLogger(__name__)
RESTART_WAIT_S = 1.0
PR_SET_PDEATHSIG = 1  # prctl(2)


def serve(app: Any, plan: PoolPlan, hostname: str, processes: int, loglevel: str) -> None:
    """Run ``processes`` event loops on the plan's queues: in this process for one, else in children."""
    from llm_router.workers.state import clear

    clear(os.getpid())  # what a killed worker of the same pid left is not ours
    from llm_router.workers.async_pool.control import ControlNode

    control = ControlNode(app, hostname, plan.queues, plan.profile.concurrency * processes).start()
    try:
        if processes == 1:
            run_loop(app, plan, hostname, loglevel, os.getpid())
        else:
            _supervise(plan, hostname, processes, loglevel)
    finally:
        control.stop()


def _supervise(plan: PoolPlan, hostname: str, processes: int, loglevel: str) -> None:
    _set_up_logging(loglevel)
    # Spawned, not forked: this process has threads (the control node's) whose locks a fork could copy held.
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start(number: int) -> multiprocessing.process.BaseProcess:
        child = context.Process(
            target=_spawned_loop, args=(plan, hostname, loglevel, os.getpid()), name=f"loop-{number}", daemon=False
        )
        child.start()
        return child

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    children = [start(number) for number in range(processes)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("remote pool: %d event-loop processes on %s", processes, ",".join(plan.queues))
    while True:
        for number, child in enumerate(children):
            child.join(timeout=0.2)
            if child.is_alive() or stopping:
                continue
            log.error("event-loop process %s ended (exit code %s); starting another", child.pid, child.exitcode)
            time.sleep(RESTART_WAIT_S)
            children[number] = start(number)
        if stopping and not any(child.is_alive() for child in children):
            return


def _spawned_loop(plan: PoolPlan, hostname: str, loglevel: str, main_pid: int) -> None:
    """A loop process started afresh: its Celery app made again from the same settings (the environment)."""
    from llm_router.broker.celery_app import create_app
    from llm_router.broker.settings import Settings
    from llm_router.workers.log_limits import quiet_outages

    quiet_outages()
    run_loop(create_app(Settings()), plan, hostname, loglevel, main_pid)


def _die_with(parent_pid: int) -> None:
    """Linux: end this process when the one that started it dies, SIGKILL included. Its jobs are then taken
    over like any dead worker's, never finished by an orphan that nobody stops."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before the request was made
        os._exit(1)


def _set_up_logging(loglevel: str) -> None:
    from llm_router.workers.celery_tasks import PER_JOB_LOGGERS

    level = logging.getLevelName(loglevel.upper())
    logging.basicConfig(level=level, format="[%(asctime)s: %(levelname)s/%(processName)s] %(message)s", force=True)
    if isinstance(level, int) and level > logging.DEBUG:
        for name in PER_JOB_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def run_loop(app: Any, plan: PoolPlan, hostname: str, loglevel: str, main_pid: int) -> None:
    """One event-loop process: its runtime, what producers and ``llm-router status`` learn of it, its loop;
    its state goes to ``main_pid``'s folder, which the control node reads."""
    from llm_router.workers.async_pool.engine import Engine
    from llm_router.workers.celery_tasks import current_runtime, preload, report_state_to

    if main_pid != os.getpid():
        _die_with(main_pid)
    _set_up_logging(loglevel)
    report_state_to(main_pid)
    app.worker_profile = plan.profile
    app.amqp.queues.select(plan.queues)
    runtime = current_runtime(app)
    # Ready (what producers and `llm-router status` learn, and the line operators wait for) once a take answered.
    engine = Engine(app, runtime, plan.queues, plan.concurrency, hostname, on_ready=lambda: preload(app))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, engine.stop)
        await engine.run()

    asyncio.run(main())
    log.info("event loop stopped")
