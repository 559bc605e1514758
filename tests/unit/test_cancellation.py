"""The pure parts of cancellation and deadlines: the ids a worker remembers, the deadline rule, and the
stopping criterion a local generation checks between tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import torch

from llm_router.tasks.store import past_deadline
from llm_router.tasks.store.views import JobView
from llm_router.workers import cancellation
from llm_router.workers.backends.local import _UntilCancelled
from llm_router.workers.cancellation import CancelWatch


def _job(age_s: float) -> JobView:
    created = datetime.now(UTC) - timedelta(seconds=age_s)
    return JobView(
        "j", "embed", "queued", "fast", "fast", None, None, {}, None, None, None, False, 0, None, created, None, None
    )


@pytest.mark.parametrize(
    ("age_s", "deadline_s", "past"),
    [
        (5.0, None, False),  # no deadline: never past it
        (5.0, 10.0, False),  # still within it
        (5.0, 4.0, True),  # one second past it
    ],
)
def test_past_deadline(age_s: float, deadline_s: float | None, past: bool) -> None:
    assert past_deadline(_job(age_s), deadline_s) is past


def test_a_worker_remembers_the_ids_it_heard_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    watch = CancelWatch(None)  # no Redis: nothing listens, the set is fed by hand
    watch.heard(["a", "b"])
    assert watch.requested("a") and watch.requested("b") and not watch.requested("c")
    monkeypatch.setattr(cancellation, "REMEMBER_MAX", 2)
    watch.heard(["c"])  # the oldest goes once the cap is passed
    assert not watch.requested("a") and watch.requested("c")


def test_the_stopping_criterion_ends_each_row_once_its_job_is_asked() -> None:
    asked = {"first": False, "second": False}
    criterion = _UntilCancelled([lambda: asked["first"], lambda: asked["second"]])
    ids = torch.zeros((2, 3), dtype=torch.long)
    assert criterion(ids, torch.zeros(2, 5)).tolist() == [False, False]
    asked["second"] = True
    assert criterion(ids, torch.zeros(2, 5)).tolist() == [False, True]  # the other row goes on
    asked["first"] = True
    assert criterion(ids, torch.zeros(2, 5)).tolist() == [True, True]


def test_a_listener_hears_each_notice_once_its_ids_are_kept() -> None:
    watch = CancelWatch(None)
    seen: list[tuple[list[str], bool]] = []
    watch.on_heard(lambda ids: seen.append((ids, all(watch.requested(job_id) for job_id in ids))))
    watch.heard(["a", "b"])
    assert seen == [(["a", "b"], True)]  # the event loop closes their calls; their runs then end cancelled
