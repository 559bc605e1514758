"""What Celery's monitors see of the event-loop processes: the remote-control commands they send (``celery
inspect ping``, ``active``, ``scheduled``, ``reserved``, ``active_queues``, ``stats``, and ``llm_router_info``
for ``llm-router status``) answered under the worker's node name, and the worker's heartbeat events (Flower
lists the worker and, from the task events of ``draining.report``, what ran). One thread of the process that
started the loops answers for all of them, reading their state files (``workers.state``), which each loop
writes every half second."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import socket
import threading
import time
from typing import Any

from llm_router.broker.queues import TASK_NAMES
from llm_router.broker.transports import Taken
from llm_router.workers.draining import Drained, task_body
from llm_router.workers.log_limits import Throttle
from llm_router.workers.state import collect

log = logging.getLogger(__name__)
HEARTBEAT_S = 2.0
LISTED_MOST = 500  # a process lists at most this many of its running, and of its scheduled, tasks
LISTS = ("active", "scheduled")
OUTAGES = Throttle()


def listed_tasks(active: list[tuple[Drained, float]], held: list[Taken], hostname: str) -> dict[str, Any]:
    """A process's tasks as ``celery inspect active`` and ``scheduled`` list a Celery worker's (their arguments
    are job ids): the messages it runs, with when they began, and those it holds until their countdown ends."""
    pid = os.getpid()
    return {
        "active": [_request(item.task_id, item.name or TASK_NAMES[item.kind], item.args, item.kwargs, item.taken,
                            hostname, pid, began) for item, began in active[:LISTED_MOST]],
        "scheduled": [_scheduled(message, hostname, pid) for message in held[:LISTED_MOST]],
    }  # fmt: skip


def _scheduled(message: Taken, hostname: str, pid: int) -> dict[str, Any]:
    args, kwargs = task_body(message) or ([], {})
    task_id = message.headers.get("id")
    request = _request(str(task_id or ""), message.task, args, kwargs, message, hostname, pid, None)
    return {"eta": message.headers.get("eta"), "priority": message.headers.get("priority"), "request": request}


def _request(
    task_id: str | None,
    name: str,
    args: Any,
    kwargs: dict[str, Any],
    message: Taken,
    hostname: str,
    pid: int,
    began: float | None,
) -> dict[str, Any]:
    return {
        "id": task_id,
        "name": name,
        "type": name,
        "args": list(args),
        "kwargs": kwargs,
        "hostname": hostname,
        "time_start": began,
        "acknowledged": False,
        "delivery_info": {"exchange": "", "routing_key": message.queue, "priority": None, "redelivered": False},
        "worker_pid": pid,
    }


class ControlNode:
    def __init__(self, app: Any, hostname: str, queues: list[str], concurrency: int):
        self.app, self.hostname, self.queues, self.concurrency = app, hostname, queues, concurrency
        self.main_pid = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-router-control", daemon=True)

    def start(self) -> ControlNode:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    # -- the commands ---------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """``llm_router_info``: the queues, the messages in flight in every loop, each process's state."""
        processes = [{k: v for k, v in state.items() if k not in LISTS} for state in collect(self.main_pid)]
        in_flight = sum(int(process.get("in_flight", 0)) for process in processes)
        return {"queues": sorted(self.queues), "in_flight": in_flight, "processes": processes}

    def listed(self, key: str) -> list[dict[str, Any]]:
        """Every loop process's ``active`` or ``scheduled`` tasks."""
        return [task for state in collect(self.main_pid) for task in state.get(key, [])]

    def handlers(self) -> dict[str, Any]:
        return {
            "ping": lambda _state, **_: {"ok": "pong"},
            "llm_router_info": lambda _state, **_: self.info(),
            "active": lambda _state, **_: self.listed("active"),
            "scheduled": lambda _state, **_: self.listed("scheduled"),
            "reserved": lambda _state, **_: [],  # a loop takes only what it starts or holds for a countdown
            "active_queues": lambda _state, **_: [{"name": queue} for queue in self.queues],
            "stats": lambda _state, **_: {
                "pid": self.main_pid,
                "pool": {"implementation": "llm_router.asyncio", "max-concurrency": self.concurrency},
            },
        }

    # -- the thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.app.connection_for_write() as connection:
                    mailbox = self.app.control.mailbox(connection)
                    node = mailbox.Node(self.hostname, channel=connection.channel(), handlers=self.handlers())
                    node.listen()
                    with self.app.events.Dispatcher(connection, hostname=self.hostname) as events:
                        events.send("worker-online", **self._identity())
                        self._serve(connection, events)
                        events.send("worker-offline", **self._identity())
            except Exception as exc:  # the broker is away: the monitors see the worker again once it is back
                if OUTAGES.allows("control"):
                    log.warning("remote control unavailable (%s: %s); trying again", type(exc).__name__, exc)
                self._stop.wait(5.0)

    def _serve(self, connection: Any, events: Any) -> None:
        beat_at = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= beat_at:
                active = self.info()["in_flight"]
                events.send("worker-heartbeat", freq=HEARTBEAT_S, active=active, processed=0, **self._identity())
                beat_at = time.monotonic() + HEARTBEAT_S
            with contextlib.suppress(socket.timeout, TimeoutError):
                connection.drain_events(timeout=0.5)

    @staticmethod
    def _identity() -> dict[str, Any]:
        load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
        return {"sw_ident": "llm-router", "sw_ver": "asyncio", "sw_sys": platform.system(), "loadavg": load}
