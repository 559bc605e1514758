"""The usage report, aggregated by the database: exact figures on a known set of rows, on PostgreSQL and on
the laptop's SQLite, and a number of fetched rows that does not grow with the tables."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from llm_router.tasks.database import make_engine, upgrade
from llm_router.tasks.records import AttemptRecord, JobRecord, UsageRecord, utcnow
from llm_router.tasks.store import JobStore
from tests.conftest import fresh_database


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "postgresql":
        with fresh_database() as url:
            engine = make_engine(url)
            yield JobStore(engine)
            engine.dispose()
    else:
        engine = make_engine(f"sqlite:///{tmp_path / 'laptop.db'}")
        upgrade(engine)
        yield JobStore(engine)
        engine.dispose()


def _job(status: str, *, error: str | None = None, days_ago: int = 0, kind: str = "generate") -> JobRecord:
    return JobRecord(
        id=str(uuid.uuid4()),
        kind=kind,
        status=status,
        tier="fast",
        queue="fast",
        request={},
        error=error,
        created_at=utcnow() - timedelta(days=days_ago),
    )


def _attempt(job: JobRecord, number: int, status: str, model: str, tier: str = "fast", **extra: Any) -> AttemptRecord:
    return AttemptRecord(job_id=job.id, number=number, status=status, model=model, tier=tier, **extra)


def _usage(job: JobRecord, model: str, tier: str | None, latency_ms: float, cached: bool = False) -> UsageRecord:
    return UsageRecord(
        job_id=job.id,
        kind=job.kind,
        tier=tier,
        model=model,
        prompt_tokens=10,
        completion_tokens=20,
        total_tokens=30,
        cached=cached,
        latency_ms=latency_ms,
        created_at=job.created_at,
    )


def _seed(store: JobStore) -> None:
    fell_back = _job("succeeded")  # a 503 retried, then answered by the next model of the chain
    hit = _job("succeeded")
    moved = _job("failed")  # its last attempt that ran names the cause; a skipped one on another tier
    timed_out = _job("failed", error="timed out after 30 s")
    rejected = _job("rejected", error="input: empty")
    silent = _job("failed", error="DeadlineExceeded: the job's deadline passed")
    unknown = _job("failed")
    old = _job("succeeded", days_ago=3)
    embeds = [_job("succeeded", kind="embed") for _ in range(20)]
    rows: list[Any] = [fell_back, hit, moved, timed_out, rejected, silent, unknown, old, *embeds]
    rows += [
        _attempt(fell_back, 1, "failed", "org/a", http_status=503, delay_s=1.5, error="HTTPError: 503"),
        _attempt(fell_back, 2, "succeeded", "org/b"),
        _attempt(moved, 1, "failed", "org/a", error="ModelNotFound: org/a"),
        _attempt(moved, 2, "skipped", "org/c", tier="balanced", error="CooldownActive: org/c"),
        _attempt(silent, 1, "failed", "org/a"),
        _attempt(old, 1, "failed", "org/a", delay_s=2.0),
        _attempt(old, 2, "succeeded", "org/b", tier="balanced"),
        _usage(fell_back, "org/b", "fast", 100.0),
        _usage(hit, "org/b", "fast", 0.5, cached=True),
        _usage(old, "org/b", "balanced", 400.0),
    ]
    rows += [_attempt(job, 1, "succeeded", "org/embed") for job in embeds]
    rows += [_usage(job, "org/embed", None, float(latency)) for latency, job in enumerate(embeds, start=1)]
    with store.session() as session:
        session.add_all(rows[: 8 + len(embeds)])
        session.flush()
        session.add_all(rows[8 + len(embeds) :])
        session.commit()


def test_the_report_counts_every_figure_exactly(store: JobStore) -> None:
    _seed(store)
    report = store.usage_report(since=utcnow() - timedelta(days=1))
    assert report.jobs == 27
    assert report.by_status == {"succeeded": 22, "failed": 4, "rejected": 1}
    assert report.failures_by_cause == {
        "rejected (bad input)": 1,
        "ModelNotFound": 1,
        "other": 1,  # "timed out after 30 s" has no identifier before a colon
        "DeadlineExceeded": 1,  # its attempt left no error: the job's own error names the cause
        "unknown": 1,
    }
    assert (report.retries, report.model_fallbacks, report.tier_fallbacks) == (1, 1, 1)
    assert (report.requests, report.cache_hits, report.cache_hit_rate) == (21, 1, pytest.approx(100 / 22))
    assert (report.prompt_tokens, report.completion_tokens, report.total_tokens) == (220, 440, 660)
    figures = {(m.tier, m.kind, m.model): (m.requests, m.cache_hits, m.p50_ms, m.p95_ms) for m in report.models}
    assert figures == {
        ("fast", "generate", "org/b"): (2, 1, 100.0, 100.0),  # the cached answer's latency is left out
        (None, "embed", "org/embed"): (20, 0, 10.0, 19.0),  # nearest rank: the 10th and the 19th of 1..20
    }
    assert [m.model for m in report.models] == ["org/embed", "org/b"]  # sorted by (tier, kind, model) as text

    everything = store.usage_report()
    assert everything.jobs == 28 and everything.retries == 2 and everything.tier_fallbacks == 2
    assert {(m.tier, m.model): m.p50_ms for m in everything.models}[("balanced", "org/b")] == 400.0


def _fetched_rows(store: JobStore) -> int:
    fetched = 0

    def count(_conn: Any, cursor: Any, *_args: Any) -> None:
        nonlocal fetched
        fetched += max(cursor.rowcount, 0)

    event.listen(store.engine, "after_cursor_execute", count)
    try:
        store.usage_report()
    finally:
        event.remove(store.engine, "after_cursor_execute", count)
    return fetched


def test_the_rows_fetched_do_not_grow_with_the_tables() -> None:
    with fresh_database() as url:
        engine = make_engine(url)
        store = JobStore(engine)
        _seed(store)
        small = _fetched_rows(store)
        for _ in range(20):
            _seed(store)  # the same statuses, causes and models, twenty-one times the rows
        assert _fetched_rows(store) == small and 0 < small < 30
        engine.dispose()
