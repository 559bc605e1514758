"""How fast a waiting caller learns that its job ended: the worker's notice against polling the row.

    python ops/bench/wait.py [--n 200] [--json OUT.json]

One cpu worker on an idle cluster (Redis broker, a fresh PostgreSQL database). For each mode — ``notice``
(``Job.wait`` sleeps on the job's Redis channel) and ``poll`` (the same wait with notices off: the row read
every 10 to 250 ms) — it submits N one-sentence embed jobs one after another and waits for each, and reports:
submit → result, p50 and p99; the job's ``finished_at`` (stamped by the worker just before its final write,
so this includes the write) → ``wait()`` returning, p50 and p99; the notice reaching a subscriber (sent just
after the write commits) → ``wait()`` returning, the wake-up's own cost (the commit lies between the two);
and for a job of a few seconds (256 long passages to embed), the row reads per waiting second. Ratios are
poll/notice in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llm_router.broker.client import Job, Router  # noqa: E402
from llm_router.broker.notifications import CHANNEL_PREFIX  # noqa: E402
from llm_router.broker.settings import Settings  # noqa: E402
from llm_router.tasks.records import aware  # noqa: E402
from llm_router.workers.bundled.prepare import prepare_models  # noqa: E402
from ops.bench.cluster import Cluster, cluster_env  # noqa: E402
from ops.bench.database import ADMIN, URL_TEMPLATE, bench_database  # noqa: E402
from ops.bench.report import compare, percentile  # noqa: E402


class CountingJob(Job):
    """A job handle that counts its row reads."""

    reads = 0

    def record(self):  # type: ignore[no-untyped-def]
        CountingJob.reads += 1
        return super().record()


def handle(router: Router, job: Job, notices: bool) -> CountingJob:
    return CountingJob(router.store, job.id, job.kind, router.settings.wait_poll_s, job._notices if notices else None)


class NoticeClock:
    """When each job's notice reached Redis subscribers, as seen by a listener thread of this process."""

    def __init__(self, url: str):
        self.arrived: dict[str, datetime] = {}
        self._pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(**{CHANNEL_PREFIX + "*": self._arrived})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.001, daemon=True)

    def _arrived(self, message: dict[str, Any]) -> None:
        self.arrived[message["channel"].decode().removeprefix(CHANNEL_PREFIX)] = datetime.now(UTC)

    def stop(self) -> None:
        self._thread.stop()


def latencies(router: Router, n: int, notices: bool, clock: NoticeClock) -> dict[str, float]:
    total, wake, notice, after_notice = [], [], [], []
    for i in range(n):
        began = time.perf_counter()
        job = handle(router, router.embed(f"sentence number {i} for the wait benchmark", use_cache=False), notices)
        job.wait(30)
        returned = datetime.now(UTC)
        total.append((time.perf_counter() - began) * 1000)
        finished = job.record().finished_at
        assert finished is not None
        wake.append((returned - aware(finished)).total_seconds() * 1000)
        if job.id in clock.arrived:
            notice.append((clock.arrived[job.id] - aware(finished)).total_seconds() * 1000)
            after_notice.append((returned - clock.arrived[job.id]).total_seconds() * 1000)
    return {
        "commit_to_notice_p50_ms": percentile(notice, 0.5) if notice else float("nan"),
        "submit_to_result_p50_ms": percentile(total, 0.5),
        "submit_to_result_p99_ms": percentile(total, 0.99),
        "commit_to_wake_p50_ms": percentile(wake, 0.5),
        "commit_to_wake_p99_ms": percentile(wake, 0.99),
        "notice_to_wake_p50_ms": percentile(after_notice, 0.5) if after_notice else float("nan"),
        "notice_to_wake_p99_ms": percentile(after_notice, 0.99) if after_notice else float("nan"),
    }


def reads_per_second(router: Router, notices: bool) -> tuple[int, float]:
    """Row reads while waiting for a job of a few seconds (256 long passages to embed), and the wait."""
    texts = [f"passage {i}: " + "a long sentence about the sea and its lighthouses. " * 20 for i in range(256)]
    job = handle(router, router.embed(texts, use_cache=False), notices)
    CountingJob.reads = 0
    began = time.perf_counter()
    job.wait(120)
    return CountingJob.reads, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5", help="emptied before use")
    args = parser.parse_args()
    models_dir = Settings().models_dir
    prepare_models(models_dir)
    redis.Redis.from_url(args.redis).flushdb()
    work = Path(tempfile.mkdtemp(prefix="llmr-wait-"))
    results: dict[str, Any] = {"n": args.n, "cores": os.cpu_count()}
    with bench_database(ADMIN, URL_TEMPLATE) as database_url:
        env = cluster_env(args.redis, database_url, work, LLM_ROUTER_MODELS_DIR=str(models_dir), HF_HUB_OFFLINE="1")
        cluster = Cluster(env, work)
        settings = Settings(broker_url=args.redis, database_url=database_url, models_dir=models_dir)
        try:
            cluster.start("worker", "--pool", "cpu", "--queues", "fast", "--concurrency", "1")
            clock = NoticeClock(args.redis)
            with Router(settings) as router:
                latencies(router, 20, True, clock)  # warm both paths
                for mode, notices in (("notice", True), ("poll", False)):
                    print(f"{mode}: {args.n} embed jobs one after another …", flush=True)
                    results[mode] = latencies(router, args.n, notices, clock)
                    reads, waited_s = reads_per_second(router, notices)
                    results[mode].update(row_reads=reads, waited_s=waited_s, row_reads_per_waiting_s=reads / waited_s)
            clock.stop()
        finally:
            cluster.stop()
    rows = [
        ("finished_at → its notice p50 (ms)", "commit_to_notice_p50_ms"),
        ("submit → result p50 (ms)", "submit_to_result_p50_ms"),
        ("submit → result p99 (ms)", "submit_to_result_p99_ms"),
        ("finished_at → wait returns p50 (ms)", "commit_to_wake_p50_ms"),
        ("finished_at → wait returns p99 (ms)", "commit_to_wake_p99_ms"),
        ("notice → wait returns p50 (ms)", "notice_to_wake_p50_ms"),
        ("notice → wait returns p99 (ms)", "notice_to_wake_p99_ms"),
        ("a long job: seconds waited", "waited_s"),
        ("a long job: row reads", "row_reads"),
        ("row reads per waiting second", "row_reads_per_waiting_s"),
    ]
    compare(results, "notice", "poll", rows, args.json)


if __name__ == "__main__":
    main()
