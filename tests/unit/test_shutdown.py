"""Stopping never hangs: the router's blocking close runs in a daemon thread of its own, and each step of the
gateway's shutdown has a bound."""

from __future__ import annotations

import asyncio
import threading

import pytest

from llm_router.broker.async_client import in_daemon_thread
from llm_router.gateway import app as gateway


def test_a_blocking_close_is_awaited_with_its_outcome_and_a_hung_one_keeps_no_process() -> None:
    calls: list[str] = []

    def fails() -> None:
        raise ValueError("refused")

    release = threading.Event()

    async def scenario() -> None:
        await in_daemon_thread(lambda: calls.append("closed"))
        with pytest.raises(ValueError, match="refused"):
            await in_daemon_thread(fails)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(in_daemon_thread(release.wait), 0.2)

    asyncio.run(scenario())
    assert calls == ["closed"]
    hung = [thread for thread in threading.enumerate() if thread.name == "llm-router-close"]
    assert hung and all(thread.daemon for thread in hung)  # the interpreter does not wait for it at exit
    release.set()


def test_a_shutdown_step_that_hangs_is_left_after_its_bound_and_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gateway, "SHUTDOWN_STEP_S", 0.1)

    async def scenario() -> None:
        await gateway._bounded("the quota ledger", asyncio.sleep(30))
        task = asyncio.create_task(asyncio.sleep(30))
        await asyncio.sleep(0)
        task.cancel()
        await gateway._bounded("a background task", task)  # cancelled as asked: nothing to say

    asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records] == [
        "shutting down: the quota ledger did not close within 0.1 s; stopping without it"
    ]
