"""Whose lease it is: a lease names host, pid namespace and pid, and a process is taken for dead only when
its pid is one this process can see."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from llm_router.workers.leases import lease_owner, pid_namespace, process_alive

HOST = socket.gethostname()


def _dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


OWNERS = [
    # (a lease's owner, whether it may be alive)
    (lambda: lease_owner(), True),  # this very process
    (lambda: f"{HOST}#{pid_namespace()}:{_dead_pid()}", False),  # a process of this namespace that ended
    (lambda: f"{HOST}#another.123:{_dead_pid()}", True),  # that pid, in another pid namespace: unknown here
    (lambda: f"elsewhere#{pid_namespace()}:{_dead_pid()}", True),  # another host
    (lambda: f"{HOST}:{_dead_pid()}", True),  # an older worker's lease, which named no namespace
]


@pytest.mark.parametrize(("owner", "alive"), OWNERS, ids=["this", "ended here", "other ns", "other host", "old"])
def test_a_process_is_taken_for_dead_only_where_its_pid_can_be_asked(owner: object, alive: bool) -> None:
    assert process_alive(owner()) is alive  # type: ignore[operator]


def test_a_lease_names_host_namespace_and_pid() -> None:
    host_and_namespace, _, pid = lease_owner().rpartition(":")
    assert host_and_namespace == f"{HOST}#{pid_namespace()}" and int(pid) == os.getpid()
