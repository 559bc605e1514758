"""The usage report: the seed's ``getUsageStats()`` (requests, cache hits, hit rate) and more, from the
database, so it covers every producer and worker of the cluster."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from tasks.records import FAILED, REJECTED, SKIPPED, SUCCEEDED, AttemptRecord, JobRecord, UsageRecord
from tasks.repository import JobStore


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


def _cause(error: str | None) -> str:
    if not error:
        return "unknown"
    head = error.split(":", 1)[0].strip()
    return head if head.isidentifier() else "other"


def usage_report(store: JobStore, since: datetime | None = None) -> UsageReport:
    with store.session() as session:
        jobs_query = select(JobRecord.id, JobRecord.status, JobRecord.error)
        usage_query = select(UsageRecord)
        attempts_query = select(
            AttemptRecord.job_id,
            AttemptRecord.number,
            AttemptRecord.status,
            AttemptRecord.model,
            AttemptRecord.tier,
            AttemptRecord.error,
            AttemptRecord.delay_s,
        ).join(JobRecord, JobRecord.id == AttemptRecord.job_id)
        if since is not None:
            jobs_query = jobs_query.where(JobRecord.created_at >= since)
            usage_query = usage_query.where(UsageRecord.created_at >= since)
            attempts_query = attempts_query.where(JobRecord.created_at >= since)
        jobs = session.execute(jobs_query).all()
        usage = session.scalars(usage_query).all()
        attempts = session.execute(attempts_query.order_by(AttemptRecord.job_id, AttemptRecord.number)).all()

    by_status: dict[str, int] = defaultdict(int)
    for _, status, _ in jobs:
        by_status[status] += 1

    per_job: dict[str, list[tuple[str, str | None, str | None, str | None, float | None]]] = defaultdict(list)
    for job_id, _, status, model, tier, error, delay_s in attempts:
        per_job[job_id].append((status, model, tier, error, delay_s))
    failures: dict[str, int] = defaultdict(int)
    failed_ids = {job_id for job_id, status, _ in jobs if status == FAILED}
    for job_id, status, error in jobs:
        if status == REJECTED:
            failures["rejected (bad input)"] += 1
        elif status == FAILED:
            tried = [a for a in per_job.get(job_id, []) if a[0] != SKIPPED]
            failures[_cause(tried[-1][3] if tried else error)] += 1
    retries = sum(1 for steps in per_job.values() for step in steps if step[4] is not None)
    model_fallbacks = tier_fallbacks = 0
    for job_id, steps in per_job.items():
        tried = [step for step in steps if step[0] != SKIPPED]
        if any(step[0] == SUCCEEDED for step in tried) and job_id not in failed_ids:
            model_fallbacks += tried[0][1] != tried[-1][1] if tried else 0
        tier_fallbacks += len({step[2] for step in steps}) > 1

    groups: dict[tuple[str | None, str, str], list[UsageRecord]] = defaultdict(list)
    for row in usage:
        groups[(row.tier, row.kind, row.model)].append(row)
    models = []
    for (tier, kind, model), rows in sorted(groups.items(), key=lambda item: tuple(str(k) for k in item[0])):
        latencies = [row.latency_ms for row in rows if not row.cached and row.latency_ms is not None]
        models.append(
            ModelUsage(
                tier=tier,
                kind=kind,
                model=model,
                requests=len(rows),
                cache_hits=sum(row.cached for row in rows),
                prompt_tokens=sum(row.prompt_tokens for row in rows),
                completion_tokens=sum(row.completion_tokens for row in rows),
                total_tokens=sum(row.total_tokens for row in rows),
                p50_ms=percentile(latencies, 0.50),
                p95_ms=percentile(latencies, 0.95),
            )
        )
    hits = sum(row.cached for row in usage)
    answered = len(usage)
    return UsageReport(
        since=since,
        jobs=len(jobs),
        by_status=dict(by_status),
        requests=answered - hits,
        cache_hits=hits,
        cache_hit_rate=100.0 * hits / answered if answered else 0.0,
        prompt_tokens=sum(row.prompt_tokens for row in usage),
        completion_tokens=sum(row.completion_tokens for row in usage),
        total_tokens=sum(row.total_tokens for row in usage),
        retries=retries,
        model_fallbacks=model_fallbacks,
        tier_fallbacks=tier_fallbacks,
        failures_by_cause=dict(failures),
        models=models,
    )
