"""The remote pool's per-call costs: each thread calls through an HTTP client of its own (a small pool, not one
of hundreds of connections), and a job logs one line at INFO, its own."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llm_router.broker.catalogue import load_catalogue
from llm_router.broker.settings import Settings
from llm_router.workers.backends.context import BackendContext
from llm_router.workers.backends.http import THREAD_CONNECTIONS
from llm_router.workers.celery_tasks import PER_JOB_LOGGERS, _one_line_per_job
from llm_router.workers.registry import ModelRegistry


def test_each_thread_calls_through_a_client_of_its_own(tmp_path: Path) -> None:
    catalogue = load_catalogue(None)
    context = BackendContext(Settings(), catalogue, ModelRegistry(catalogue, tmp_path, "cpu"), max_batch=32)
    mine = context.http()
    assert context.http() is mine and isinstance(mine, httpx.Client)
    theirs: list[httpx.Client] = []
    thread = threading.Thread(target=lambda: theirs.append(context.http()))
    thread.start()
    thread.join()
    assert theirs and theirs[0] is not mine
    pool = mine._transport._pool  # type: ignore[attr-defined]
    assert pool._max_connections == THREAD_CONNECTIONS  # a few hosts' connections, not the pool's slots
    caller = context.remote("openai", None).caller
    assert caller._client_of() is mine  # the caller asks for the calling thread's client at each call


@pytest.fixture
def levels() -> Iterator[None]:
    kept = {name: logging.getLogger(name).level for name in PER_JOB_LOGGERS}
    yield
    for name, level in kept.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("levels")
@pytest.mark.parametrize(("asked", "quiet"), [(logging.INFO, True), ("INFO", True), (logging.DEBUG, False)])
def test_a_job_logs_its_own_line_only_unless_asked_for_everything(asked: int | str, quiet: bool) -> None:
    for name in PER_JOB_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    _one_line_per_job(loglevel=asked)
    assert all((logging.getLogger(name).level == logging.WARNING) is quiet for name in PER_JOB_LOGGERS)
