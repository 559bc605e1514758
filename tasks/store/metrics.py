"""What ``/metrics`` reports, aggregated by the database on each scrape: the rows fetched number the label
sets and buckets, never the jobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Float, func, select

from llm_router.tasks.records import UNFINISHED_STATUSES, AttemptRecord, JobRecord, UsageRecord
from llm_router.tasks.store.base import StoreBase

# Upper bounds, in seconds, of the latency histograms' buckets.
BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True)
class Histogram:
    counts: list[int]  # cumulative, one per bucket of BUCKETS_S, then +Inf
    total_s: float


@dataclass
class MetricsSnapshot:
    jobs: list[tuple[str, str, str, str, int]] = field(default_factory=list)  # kind, tier, model, status, n
    tokens: list[tuple[str, str, str, int, int, int]] = field(default_factory=list)  # kind, tier, model, p, c, hits
    attempts: list[tuple[str, str, int]] = field(default_factory=list)  # model, status, n
    fallbacks: list[tuple[str, int]] = field(default_factory=list)  # tier, tier hops
    waiting: list[tuple[str, str, int]] = field(default_factory=list)  # queue, status, jobs
    latency: dict[str, Histogram] = field(default_factory=dict)  # queue_wait, model, end_to_end


def _histogram(seconds: Any, where: list[ColumnElement[bool]]) -> Any:
    columns = [func.count().filter(seconds <= bound) for bound in BUCKETS_S]
    return select(*columns, func.count(), func.coalesce(func.sum(seconds), 0.0)).where(*where)


class MetricsReads(StoreBase):
    def metrics_snapshot(self, window_s: float = 900.0) -> MetricsSnapshot:
        """Counts over the tables as they are (pruning lowers them), and latency histograms of the jobs that
        ended in the last ``window_s``."""
        since = datetime.now(UTC) - timedelta(seconds=window_s)
        snapshot = MetricsSnapshot()
        with self.session() as session:
            model = func.coalesce(JobRecord.model_used, "")
            tier = func.coalesce(JobRecord.tier, "")
            snapshot.jobs = [
                (k, t, m, s, int(n))
                for k, t, m, s, n in session.execute(
                    select(JobRecord.kind, tier, model, JobRecord.status, func.count()).group_by(
                        JobRecord.kind, tier, model, JobRecord.status
                    )
                )
            ]
            usage_tier = func.coalesce(UsageRecord.tier, "")
            hits = func.sum(func.cast(UsageRecord.cached, type_=UsageRecord.prompt_tokens.type))
            snapshot.tokens = [
                (k, t, m, int(p or 0), int(c or 0), int(h or 0))
                for k, t, m, p, c, h in session.execute(
                    select(
                        UsageRecord.kind,
                        usage_tier,
                        UsageRecord.model,
                        func.sum(UsageRecord.prompt_tokens),
                        func.sum(UsageRecord.completion_tokens),
                        hits,
                    ).group_by(UsageRecord.kind, usage_tier, UsageRecord.model)
                )
            ]
            attempt_model = func.coalesce(AttemptRecord.model, "")
            snapshot.attempts = [
                (m, s, int(n))
                for m, s, n in session.execute(
                    select(attempt_model, AttemptRecord.status, func.count()).group_by(
                        attempt_model, AttemptRecord.status
                    )
                )
            ]
            snapshot.fallbacks = [
                (t, int(n or 0))
                for t, n in session.execute(
                    select(tier, func.sum(JobRecord.tier_hops)).where(JobRecord.tier_hops > 0).group_by(tier)
                )
            ]
            queue = func.coalesce(JobRecord.queue, "")
            snapshot.waiting = [
                (q, s, int(n))
                for q, s, n in session.execute(
                    select(queue, JobRecord.status, func.count())
                    .where(JobRecord.status.in_(UNFINISHED_STATUSES))
                    .group_by(queue, JobRecord.status)
                )
            ]
            recent = [JobRecord.finished_at >= since, JobRecord.started_at.is_not(None)]
            waited = _seconds(JobRecord.started_at, JobRecord.created_at, session.get_bind().dialect.name)
            snapshot.latency["queue_wait"] = _read(session.execute(_histogram(waited, recent)).one())
            end_to_end = (JobRecord.latency_ms / 1000.0).cast(Float)
            snapshot.latency["end_to_end"] = _read(
                session.execute(_histogram(end_to_end, [JobRecord.finished_at >= since])).one()
            )
            model_s = (AttemptRecord.latency_ms / 1000.0).cast(Float)
            snapshot.latency["model"] = _read(
                session.execute(
                    _histogram(model_s, [AttemptRecord.finished_at >= since, AttemptRecord.latency_ms.is_not(None)])
                ).one()
            )
        return snapshot


def _seconds(later: Any, earlier: Any, dialect: str) -> Any:
    """Seconds between two time columns, in the database's own arithmetic."""
    if dialect == "postgresql":
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def _read(row: tuple[int | float, ...]) -> Histogram:
    *buckets, count, total = row
    return Histogram([int(n) for n in buckets] + [int(count)], float(total or 0.0))
