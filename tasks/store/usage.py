"""The usage report: the seed's ``getUsageStats()`` (requests, cache hits, hit rate) and more, from the
database, so it covers every producer and worker of the cluster."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, case, func, select, type_coerce
from sqlalchemy.orm import Session, aliased

from llm_router.tasks.records import AttemptRecord, AttemptStatus, JobRecord, JobStatus, UsageRecord
from llm_router.tasks.store.base import StoreBase
from llm_router.tasks.store.views import UsageRow

_FRACTIONS = (0.50, 0.95)
_HEAD_CHARS = 100  # a cause is an identifier: no need to group on more of the error


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True)
class ModelUsage:
    tier: str | None
    kind: str
    model: str
    requests: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    p50_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class UsageReport:
    since: datetime | None
    jobs: int
    by_status: dict[str, int]
    requests: int  # jobs answered by a model
    cache_hits: int
    cache_hit_rate: float  # percent of answered jobs that came from the cache, as the seed computes it
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    retries: int
    model_fallbacks: int  # jobs answered by another model than the first they tried
    tier_fallbacks: int  # jobs that moved to another tier
    failures_by_cause: dict[str, int]
    models: list[ModelUsage] = field(default_factory=list)


def _cause(head: str | None) -> str:
    """The cause a failure is counted under: the error's leading identifier (``ModelNotFound: …``)."""
    if head is None:
        return "unknown"
    head = head.strip()
    return head if head.isidentifier() else "other"


class UsageReports(StoreBase):
    def usage_report(self, since: datetime | None = None) -> UsageReport:
        """Every figure is aggregated by the database: the rows fetched number the statuses, causes and models,
        never the jobs, so neither time in Python nor memory grows with the tables."""
        jobs_window = [JobRecord.created_at >= since] if since is not None else []
        usage_window = [UsageRecord.created_at >= since] if since is not None else []
        with self.session() as session:
            postgres = session.get_bind().dialect.name == "postgresql"
            by_status = {
                status: count
                for status, count in session.execute(
                    select(JobRecord.status, func.count()).where(*jobs_window).group_by(JobRecord.status)
                ).all()
            }
            retries = session.scalar(
                select(func.count())
                .select_from(AttemptRecord)
                .join(JobRecord, JobRecord.id == AttemptRecord.job_id)
                .where(AttemptRecord.delay_s.is_not(None), *jobs_window)
            )
            failures = _failures(session, jobs_window, postgres)
            if by_status.get(JobStatus.REJECTED):
                failures = {"rejected (bad input)": by_status[JobStatus.REJECTED], **failures}
            models = _models(session, usage_window, postgres)
            model_fallbacks = _model_fallbacks(session, jobs_window)
            tier_fallbacks = _tier_fallbacks(session, jobs_window)

        hits = sum(model.cache_hits for model in models)
        answered = sum(model.requests for model in models)
        return UsageReport(
            since=since,
            jobs=sum(by_status.values()),
            by_status=by_status,
            requests=answered - hits,
            cache_hits=hits,
            cache_hit_rate=100.0 * hits / answered if answered else 0.0,
            prompt_tokens=sum(model.prompt_tokens for model in models),
            completion_tokens=sum(model.completion_tokens for model in models),
            total_tokens=sum(model.total_tokens for model in models),
            retries=retries or 0,
            model_fallbacks=model_fallbacks,
            tier_fallbacks=tier_fallbacks,
            failures_by_cause=failures,
            models=models,
        )

    def usage_by_model(self) -> list[UsageRow]:
        query = (
            select(
                UsageRecord.model,
                UsageRecord.tier,
                UsageRecord.kind,
                func.count(UsageRecord.id),
                func.sum(func.cast(UsageRecord.cached, type_=UsageRecord.prompt_tokens.type)),
                func.sum(UsageRecord.prompt_tokens),
                func.sum(UsageRecord.completion_tokens),
                func.sum(UsageRecord.total_tokens),
                func.avg(UsageRecord.latency_ms),
            )
            .group_by(UsageRecord.model, UsageRecord.tier, UsageRecord.kind)
            .order_by(UsageRecord.tier, UsageRecord.kind, UsageRecord.model)
        )
        with self.session() as session:
            return [
                UsageRow(
                    model=model,
                    tier=tier,
                    kind=kind,
                    requests=int(n),
                    cache_hits=int(hits or 0),
                    prompt_tokens=int(p or 0),
                    completion_tokens=int(c or 0),
                    total_tokens=int(t or 0),
                    avg_latency_ms=float(lat or 0.0),
                )
                for model, tier, kind, n, hits, p, c, t, lat in session.execute(query)
            ]

    def status_counts(self) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(select(JobRecord.status, func.count()).group_by(JobRecord.status))
            return {status: int(count) for status, count in rows}


def _failures(session: Session, jobs_window: list[ColumnElement[bool]], postgres: bool) -> dict[str, int]:
    """Failed jobs by the cause of their last attempt that ran (the job's own error if none ran), grouped in
    SQL by the error's text before its first colon."""
    last_error = (
        select(AttemptRecord.error)
        .where(AttemptRecord.job_id == JobRecord.id, AttemptRecord.status != AttemptStatus.SKIPPED)
        .order_by(AttemptRecord.number.desc())
        .limit(1)
        .correlate(JobRecord)
        .scalar_subquery()
    )
    error = type_coerce(func.nullif(func.coalesce(last_error, JobRecord.error), ""), Text)
    colon = (func.strpos if postgres else func.instr)(error.concat(":"), ":")
    head = func.substr(error, 1, func.least(colon - 1, _HEAD_CHARS) if postgres else func.min(colon - 1, _HEAD_CHARS))
    rows = session.execute(
        select(head, func.count()).where(JobRecord.status == JobStatus.FAILED, *jobs_window).group_by(head)
    ).all()
    failures: dict[str, int] = defaultdict(int)
    for cause, count in rows:
        failures[_cause(cause)] += count
    return dict(failures)


def _models(session: Session, usage_window: list[ColumnElement[bool]], postgres: bool) -> list[ModelUsage]:
    """Counts, tokens and latency percentiles per (tier, kind, model); latencies of computed answers only."""
    computed = case((UsageRecord.cached.is_(False), UsageRecord.latency_ms))  # NULL otherwise: not counted
    sums = [
        func.count(),
        func.sum(case((UsageRecord.cached.is_(True), 1), else_=0)),
        func.sum(UsageRecord.prompt_tokens),
        func.sum(UsageRecord.completion_tokens),
        func.sum(UsageRecord.total_tokens),
    ]
    latency: list[ColumnElement[Any]]
    if postgres:
        # percentile_disc is the nearest-rank percentile of ``percentile``; ordered-set aggregates skip NULLs.
        latency = [func.percentile_disc(fraction).within_group(computed) for fraction in _FRACTIONS]
    else:
        latency = [func.count(computed)]
    groups = (UsageRecord.tier, UsageRecord.kind, UsageRecord.model)
    rows = session.execute(select(*groups, *sums, *latency).where(*usage_window).group_by(*groups)).all()
    models = []
    for tier, kind, model, requests, hits, prompt, completion, total, *figures in rows:
        if postgres:
            p50, p95 = figures
        else:
            p50, p95 = (
                _nth_latency(session, usage_window, (tier, kind, model), figures[0], fraction)
                for fraction in _FRACTIONS
            )
        models.append(
            ModelUsage(
                tier=tier,
                kind=kind,
                model=model,
                requests=requests,
                cache_hits=hits or 0,
                prompt_tokens=prompt or 0,
                completion_tokens=completion or 0,
                total_tokens=total or 0,
                p50_ms=p50,
                p95_ms=p95,
            )
        )
    return sorted(models, key=lambda m: (str(m.tier), m.kind, m.model))


def _nth_latency(
    session: Session,
    usage_window: list[ColumnElement[bool]],
    group: tuple[str | None, str, str],
    count: int,
    fraction: float,
) -> float | None:
    """SQLite has no percentile aggregate: the nearest-rank value is read with one indexed row."""
    if not count:
        return None
    tier, kind, model = group
    return session.scalar(
        select(UsageRecord.latency_ms)
        .where(
            UsageRecord.tier.is_(None) if tier is None else UsageRecord.tier == tier,
            UsageRecord.kind == kind,
            UsageRecord.model == model,
            UsageRecord.cached.is_(False),
            UsageRecord.latency_ms.is_not(None),
            *usage_window,
        )
        .order_by(UsageRecord.latency_ms)
        .offset(max(0, math.ceil(fraction * count) - 1))
        .limit(1)
    )


def _model_fallbacks(session: Session, jobs_window: list[ColumnElement[bool]]) -> int:
    """Jobs answered (and not failed) whose last attempt that ran used another model than their first."""
    ran = (
        select(
            AttemptRecord.job_id,
            func.min(AttemptRecord.number).label("first"),
            func.max(AttemptRecord.number).label("last"),
        )
        .join(JobRecord, JobRecord.id == AttemptRecord.job_id)
        .where(AttemptRecord.status != AttemptStatus.SKIPPED, JobRecord.status != JobStatus.FAILED, *jobs_window)
        .group_by(AttemptRecord.job_id)
        .having(func.count() > 1, func.max(case((AttemptRecord.status == AttemptStatus.SUCCEEDED, 1), else_=0)) == 1)
        .subquery()
    )
    first, last = aliased(AttemptRecord), aliased(AttemptRecord)
    return (
        session.scalar(
            select(func.count())
            .select_from(ran)
            .join(first, and_(first.job_id == ran.c.job_id, first.number == ran.c.first))
            .join(last, and_(last.job_id == ran.c.job_id, last.number == ran.c.last))
            .where(first.model.is_distinct_from(last.model))
        )
        or 0
    )


def _tier_fallbacks(session: Session, jobs_window: list[ColumnElement[bool]]) -> int:
    """Jobs whose attempts name more than one tier."""
    moved = (
        select(AttemptRecord.job_id)
        .join(JobRecord, JobRecord.id == AttemptRecord.job_id)
        .where(*jobs_window)
        .group_by(AttemptRecord.job_id)
        .having(func.min(AttemptRecord.tier) != func.max(AttemptRecord.tier))  # cheaper than count(distinct)
        .subquery()
    )
    return session.scalar(select(func.count()).select_from(moved)) or 0
