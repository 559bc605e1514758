"""Benchmark ``llm-router usage`` on large tables: the report aggregated in SQL against reading the rows.

    python ops/bench/usage_report.py [--sizes 20000,200000] [--json OUT.json]

A fresh PostgreSQL database (dropped after) is filled by SQL with jobs of the shape a busy cluster leaves
(90 % succeeded with usage rows over six models, one in ten retried once, 8 % failed under four causes, 2 %
rejected), grown size by size. At each size it measures, best of three:

(a) the report, ``tasks.usage_report.usage_report``: wall time and the peak of Python memory (tracemalloc);
(b) the reference: the same database read as rows into Python (every job's id, status and error, every
    usage row, every attempt of the window), which is what a report computed in Python has to fetch.

It prints a table and writes JSON with each figure and the ratios ``time_ratio`` = a/b and
``memory_ratio`` = a/b per size, and ``memory_growth`` = a's peak at the largest size / at the smallest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llm_router.tasks.database import make_engine  # noqa: E402
from llm_router.tasks.records import AttemptRecord, JobRecord, UsageRecord  # noqa: E402
from llm_router.tasks.store import JobStore  # noqa: E402
from ops.bench.database import ADMIN, URL_TEMPLATE, bench_database  # noqa: E402

FILL = [
    """INSERT INTO jobs (id, kind, status, tier, queue, request, error, cached, attempts, created_at)
       SELECT md5('job' || i)::uuid::text, 'generate',
              CASE WHEN i % 50 = 0 THEN 'rejected' WHEN i % 50 < 5 THEN 'failed' ELSE 'succeeded' END,
              'fast', 'fast', '{}'::json,
              CASE WHEN i % 50 = 0 THEN 'input: empty'
                   WHEN i % 50 < 5
                   THEN (ARRAY['ModelNotFound: m', 'ProviderError: 500', 'timed out', 'Gone: x'])[i % 4 + 1]
              END,
              false, 1, now() - (i % 1000) * interval '1 second'
       FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS i""",
    """INSERT INTO attempts (job_id, number, status, model, provider, tier, error, delay_s, latency_ms, started_at)
       SELECT md5('job' || i)::uuid::text, 1,
              CASE WHEN i % 10 = 7 OR i % 50 < 5 THEN 'failed' ELSE 'succeeded' END,
              'org/model-' || (i % 6), 'local', 'fast',
              CASE WHEN i % 10 = 7 THEN 'ProviderError: 503' END,
              CASE WHEN i % 10 = 7 THEN 1.5 END, 40 + i % 200, now()
       FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS i WHERE i % 50 <> 0""",
    """INSERT INTO attempts (job_id, number, status, model, provider, tier, latency_ms, started_at)
       SELECT md5('job' || i)::uuid::text, 2, 'succeeded', 'org/model-' || ((i + 1) % 6), 'local', 'fast',
              40 + i % 200, now()
       FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS i WHERE i % 10 = 7 AND i % 50 >= 5""",
    """INSERT INTO usage (job_id, kind, tier, model, provider, prompt_tokens, completion_tokens, total_tokens,
                          cached, latency_ms, created_at)
       SELECT md5('job' || i)::uuid::text, 'generate', 'fast', 'org/model-' || (i % 6), 'local', 12, 40, 52,
              i % 7 = 0, 40 + i % 200, now() - (i % 1000) * interval '1 second'
       FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS i WHERE i % 50 >= 5""",
    "ANALYZE",
]


def read_rows(store: JobStore) -> int:
    """The reference: the rows a report computed in Python reads."""
    with store.session() as session:
        jobs = session.execute(select(JobRecord.id, JobRecord.status, JobRecord.error)).all()
        usage = session.scalars(select(UsageRecord)).all()
        attempts = session.execute(
            select(AttemptRecord.job_id, AttemptRecord.number, AttemptRecord.status, AttemptRecord.model)
            .join(JobRecord, JobRecord.id == AttemptRecord.job_id)
            .order_by(AttemptRecord.job_id, AttemptRecord.number)
        ).all()
    return len(jobs) + len(usage) + len(attempts)


def measure(run: Callable[[], Any], repeats: int = 3) -> dict[str, float]:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": min(timings), "peak_mib": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,200000", help="job counts, ascending")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--pg-admin", default=ADMIN)
    parser.add_argument("--pg-url", default=URL_TEMPLATE)
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))

    results: list[dict[str, Any]] = []
    with bench_database(args.pg_admin, args.pg_url) as url:
        engine = make_engine(url)
        store = JobStore(engine)
        filled = 0
        for size in sizes:
            with engine.begin() as connection:
                for statement in FILL:
                    connection.execute(text(statement), {"first": filled + 1, "last": size})
            filled = size
            report = measure(lambda: store.usage_report())
            rows = measure(lambda: read_rows(store))
            results.append(
                {
                    "jobs": size,
                    "report": report,
                    "rows_in_python": rows,
                    "time_ratio": report["seconds"] / rows["seconds"],
                    "memory_ratio": report["peak_mib"] / rows["peak_mib"],
                }
            )
        engine.dispose()

    print(f"{'jobs':>9} {'report s':>9} {'report MiB':>11} {'rows s':>8} {'rows MiB':>9} {'time':>7} {'memory':>7}")
    for row in results:
        print(
            f"{row['jobs']:>9,} {row['report']['seconds']:>9.3f} {row['report']['peak_mib']:>11.2f}"
            f" {row['rows_in_python']['seconds']:>8.3f} {row['rows_in_python']['peak_mib']:>9.1f}"
            f" {row['time_ratio']:>7.3f} {row['memory_ratio']:>7.4f}"
        )
    growth = results[-1]["report"]["peak_mib"] / results[0]["report"]["peak_mib"]
    print(f"report memory at {sizes[-1]:,} jobs / at {sizes[0]:,}: {growth:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"sizes": results, "memory_growth": growth}, indent=2))


if __name__ == "__main__":
    main()
