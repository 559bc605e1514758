"""Job-level metrics for Prometheus, read from the records on each scrape (Flower's /metrics counts Celery
tasks, and a task that "succeeds" may be a job that failed). Served on the gateway's ``GET /metrics`` (to
operator keys) and by ``llm-router metrics --port N``.

    llm_router_jobs_ended_total{kind,tier,model,status}   jobs in a final state
    llm_router_queue_jobs{queue,lane,status}               jobs waiting (queued, retrying) or running, per queue
    llm_router_tokens_total{kind,tier,model,type}          prompt and completion tokens
    llm_router_cache_hits_total{kind,tier,model}           jobs answered from the cache
    llm_router_attempts_total{model,status}                attempts: failed ones were retried or fell back,
                                                           skipped ones passed a cooling model over
    llm_router_fallbacks_total{tier}                       tier hops (a job moved down its tier chain)
    llm_router_latency_seconds{stage}                      queue_wait, model, end_to_end, of the jobs that
                                                           ended in the last 15 minutes (a gauge histogram)
    llm_router_deferrals_total{tier}                       messages put off (a rate limit, a chain all cooling)
    llm_router_cooling_seconds{model}                      models cooling down, and the seconds left

Counts are the tables' own: retention's pruning lowers them, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from redis.exceptions import RedisError

from llm_router.broker.counters import cooling, deferrals
from llm_router.broker.routing import lane_of
from llm_router.tasks.records import FINAL_STATUSES
from llm_router.tasks.store import BUCKETS_S, JobStore

WINDOW_S = 900.0


class JobMetrics(Collector):
    def __init__(self, store: JobStore, client: redis.Redis | None):
        self.store, self.client = store, client

    def collect(self) -> Iterator[Metric]:
        snapshot = self.store.metrics_snapshot(WINDOW_S)
        ended = CounterMetricFamily(
            "llm_router_jobs_ended", "Jobs in a final state.", labels=["kind", "tier", "model", "status"]
        )
        for kind, tier, model, status, count in snapshot.jobs:
            if status in FINAL_STATUSES:
                ended.add_metric([kind, tier, model, status], count)
        yield ended
        waiting = GaugeMetricFamily(
            "llm_router_queue_jobs", "Jobs waiting or running, per queue.", labels=["queue", "lane", "status"]
        )
        for queue, status, count in snapshot.waiting:
            waiting.add_metric([queue, lane_of(queue), status], count)
        yield waiting
        tokens = CounterMetricFamily("llm_router_tokens", "Tokens used.", labels=["kind", "tier", "model", "type"])
        hits = CounterMetricFamily(
            "llm_router_cache_hits", "Jobs answered from the cache.", labels=["kind", "tier", "model"]
        )
        for kind, tier, model, prompt, completion, cached in snapshot.tokens:
            tokens.add_metric([kind, tier, model, "prompt"], prompt)
            tokens.add_metric([kind, tier, model, "completion"], completion)
            hits.add_metric([kind, tier, model], cached)
        yield tokens
        yield hits
        attempts = CounterMetricFamily("llm_router_attempts", "Attempts on a model.", labels=["model", "status"])
        for model, status, count in snapshot.attempts:
            attempts.add_metric([model, status], count)
        yield attempts
        fallbacks = CounterMetricFamily("llm_router_fallbacks", "Tier hops down a tier chain.", labels=["tier"])
        for tier, hops in snapshot.fallbacks:
            fallbacks.add_metric([tier], hops)
        yield fallbacks
        latency = GaugeHistogramMetricFamily(
            "llm_router_latency_seconds",
            f"Latency of the jobs that ended in the last {WINDOW_S:g} s.",
            labels=["stage"],
        )
        for stage, histogram in snapshot.latency.items():
            buckets = [(_bound(b), n) for b, n in zip((*BUCKETS_S, float("inf")), histogram.counts, strict=True)]
            latency.add_metric([stage], buckets, histogram.total_s)
        yield latency
        if self.client is None:
            return
        try:
            put_off, cooling_now = deferrals(self.client), cooling(self.client)
        except RedisError:
            return  # the shared state is away: the database's figures are still reported
        deferred = CounterMetricFamily(
            "llm_router_deferrals", "Messages put off by a rate limit or a chain all cooling.", labels=["tier"]
        )
        for tier, count in put_off.items():
            deferred.add_metric([tier], count)
        yield deferred
        cools = GaugeMetricFamily("llm_router_cooling_seconds", "Models cooling down: seconds left.", labels=["model"])
        for model, left in cooling_now.items():
            cools.add_metric([model], left)
        yield cools


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else f"{value:g}"


def registry(store: JobStore, redis_url: str | None) -> CollectorRegistry:
    found = CollectorRegistry(auto_describe=False)
    client = redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0) if redis_url else None
    found.register(JobMetrics(store, client))
    return found


def exposition(registry_: CollectorRegistry) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    return generate_latest(registry_), CONTENT_TYPE_LATEST
