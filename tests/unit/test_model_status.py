"""The seed's waitForModel loop, on a fake clock: pure logic, no I/O."""

from __future__ import annotations

import pytest

from llm_router.workers.model_status import ModelStatus, wait_for_model


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("statuses", "max_wait", "expected", "checks"),
    [
        (["ready"], 120, "ready", 1),  # ready at once
        (["loading", "loading", "ready"], 120, "ready", 3),  # waits through loading
        (["loading", "error"], 120, "error", 2),  # an error ends the wait
        (["loading"] * 100, 12, "loading", 3),  # gives up: checks at 0, 5, 10 s; 15 s would pass 12
        (["loading"], 0, "loading", 1),  # no waiting asked for: one check
    ],
)
def test_wait_for_model(statuses: list[ModelStatus], max_wait: float, expected: str, checks: int) -> None:
    clock = Clock()
    answers = iter(statuses)
    status, made = wait_for_model(lambda: next(answers), max_wait, 5.0, sleep=clock.sleep, clock=lambda: clock.now)
    assert (status, made) == (expected, checks)
