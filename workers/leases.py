"""The lease a worker process holds on the jobs it runs, and the thread that keeps it.

A job is started under a lease ("host#namespace:pid", until when, on the database's clock). The process
renews the lease of all its running jobs every third of the lease, in one statement, for as long as it lives;
a duplicate message of a job whose lease holds is put off instead of running the job a second time. A process
that dies stops renewing: its jobs' leases run out and the next message (a redelivery, a requeue) takes them
over. A dead process whose pid this process can see is known at once, so a killed pool process's job is taken
over without waiting for its lease.

A host name alone does not say which process a pid is: containers on the host's network share the host's
name, not its process ids, and two machines may share a name. So a lease also names the process-id namespace
it was taken in (the boot's id and the namespace's inode); a pid is asked about (``os.kill(pid, 0)``) only when
both are this process's own. Anywhere else, only the lease's end can tell.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from functools import cache
from pathlib import Path

from llm_router.tasks.store import JobStore, Lease

log = logging.getLogger(__name__)


@cache
def pid_namespace() -> str:
    """Which process-id namespace this process is in, on this boot of this machine ("-": no /proc to tell,
    where one host is one namespace)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
        return f"{boot}.{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return "-"


def lease_owner() -> str:
    """This process, as its leases name it: host, pid namespace and pid."""
    return f"{socket.gethostname()}#{pid_namespace()}:{os.getpid()}"


def process_alive(owner: str) -> bool:
    """Whether the process named by a lease may still be alive: False only when it is known dead, that is
    when its pid is one this process can see (the same host, boot and pid namespace) and names no process."""
    place, _, pid = owner.rpartition(":")
    host, _, namespace = place.partition("#")
    if host != socket.gethostname() or namespace != pid_namespace() or not pid.isdigit():
        return True  # another machine or another namespace (or an older worker's lease): only its end can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lease_for_this_process(seconds: float) -> Lease:
    return Lease(owner=lease_owner(), seconds=seconds, alive=process_alive)


class LeaseKeeper:
    """Renews this process's leases in a daemon thread, started once per process (after the fork)."""

    def __init__(self, store: JobStore, lease: Lease):
        self._store, self._lease = store, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-router-lease", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = self._lease.seconds / 3.0
        while not self._stop.wait(interval):
            try:
                self._store.renew_leases(self._lease.owner, self._lease.seconds)
            except Exception as exc:  # the database may be restarting: the next round tries again
                log.warning("could not renew job leases (%s)", type(exc).__name__)


class RunningHere:
    """The jobs this process runs now. A lease names a process, not a thread: in the remote pool, where one
    process runs hundreds of jobs at once, a duplicate message taken by another thread would find the lease
    its own. A job already running in this process is put off like one running in another."""

    def __init__(self) -> None:
        self._jobs: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, job_ids: list[str]) -> list[str]:
        """Mark as running here those of ``job_ids`` that are not yet; returns them."""
        with self._lock:
            free = [job_id for job_id in dict.fromkeys(job_ids) if job_id not in self._jobs]
            self._jobs.update(free)
            return free

    def release(self, job_ids: list[str]) -> None:
        with self._lock:
            self._jobs.difference_update(job_ids)
