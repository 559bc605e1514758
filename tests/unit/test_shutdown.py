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

    async def deaf() -> None:
        """A loop that takes its cancellation for a timeout of its own and goes on (as a client library may)."""
        while True:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                continue

    async def scenario() -> None:
        await gateway._bounded("the quota ledger", asyncio.sleep(30))
        task = asyncio.create_task(asyncio.sleep(30))
        await asyncio.sleep(0)
        task.cancel()
        await gateway._bounded("a background task", task)  # cancelled as asked: nothing to say
        stubborn = asyncio.create_task(deaf())
        await asyncio.sleep(0)
        stubborn.cancel()
        began = asyncio.get_running_loop().time()
        await gateway._bounded("the notices", stubborn)
        assert asyncio.get_running_loop().time() - began < 5  # not waiting for it to take its cancellation

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        for task in asyncio.all_tasks(loop):
            task.get_coro().close()  # type: ignore[union-attr]  # the deaf loop, left as the gateway leaves it
        loop.close()
    assert [r.getMessage() for r in caplog.records] == [
        "shutting down: the quota ledger did not close within 0.1 s; stopping without it",
        "shutting down: the notices did not close within 0.1 s; stopping without it",
    ]
