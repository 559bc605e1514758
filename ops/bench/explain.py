"""The hot queries' plans on a table of a million jobs: the store's own statements, run under EXPLAIN ANALYZE.

    python ops/bench/explain.py [--jobs 1000000] [--json OUT.json]

Builds a scratch PostgreSQL database at the schema's head, fills it in SQL (jobs over 60 days, 97 % succeeded,
the rest failed, queued, retrying or running; half in batches of 1,000; an attempt and a usage row each),
then calls the store's methods while recording the statements they send, and prints each statement's plan
and time. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llm_router.tasks.database import make_engine  # noqa: E402
from llm_router.tasks.store import JobStore  # noqa: E402
from ops.bench.database import ADMIN, URL_TEMPLATE, bench_database  # noqa: E402

FILL = """
INSERT INTO jobs (id, kind, status, tier, queue, request, result, batch_id, cache_key, cached, attempts,
                  created_at, started_at, finished_at, latency_ms, model_used, lease_owner, lease_until, due_at,
                  tier_hops)
SELECT 'job-' || i,
       'embed',
       CASE WHEN i % 1000 = 1 THEN 'failed' WHEN i % 1000 = 2 THEN 'queued' WHEN i % 1000 = 3 THEN 'retrying'
            WHEN i % 1000 = 4 THEN 'running' ELSE 'succeeded' END,
       'fast', 'fast',
       jsonb_build_object('input', 'sentence ' || i),
       CASE WHEN i % 1000 NOT IN (1, 2, 3, 4) THEN jsonb_build_object('data', jsonb_build_array(i)) END,
       CASE WHEN i % 2 = 0 THEN 'batch-' || (i / 2000) END,
       md5((i % 200000)::text),
       false, 1,
       now() - (i * interval '60 days' / :jobs),
       now() - (i * interval '60 days' / :jobs),
       CASE WHEN i % 1000 NOT IN (2, 3, 4) THEN now() - (i * interval '60 days' / :jobs) + interval '1 second' END,
       40.0, 'sentence-transformers/all-MiniLM-L6-v2',
       CASE WHEN i % 1000 = 4 THEN 'host:1' END,
       CASE WHEN i % 1000 = 4 THEN now() + interval '30 seconds' END,
       CASE WHEN i % 1000 IN (2, 3) THEN now() + interval '10 seconds' END,
       0
FROM generate_series(1, :jobs) AS i
"""
ATTEMPTS = """
INSERT INTO attempts (job_id, number, status, model, provider, tier, started_at, finished_at, total_tokens)
SELECT id, 1, CASE WHEN status IN ('queued', 'retrying') THEN 'failed' ELSE status END,
       model_used, 'local', tier, created_at, finished_at, 12
FROM jobs
"""
USAGE = """
INSERT INTO usage (job_id, kind, tier, model, provider, prompt_tokens, completion_tokens, total_tokens, cached,
                   latency_ms, created_at)
SELECT id, kind, tier, model_used, 'local', 12, 0, 12, false, latency_ms, finished_at
FROM jobs WHERE status = 'succeeded'
"""


def fill(store: JobStore, jobs: int) -> None:
    with store.engine.begin() as connection:
        connection.execute(text(FILL), {"jobs": jobs})
        connection.execute(text(ATTEMPTS))
        connection.execute(text(USAGE))
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))


def record_statements(store: JobStore) -> list[tuple[str, Any]]:
    """A list that fills with the reading statements the store sends (emptied by the caller between calls)."""
    seen: list[tuple[str, Any]] = []

    def remember(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", remember)
    return seen


def explain(store: JobStore, statement: str, parameters: Any) -> tuple[str, float]:
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", parameters)
        plan = cursor.fetchone()[0][0]
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT TEXT) {statement}", parameters)
        lines = [row[0] for row in cursor.fetchall()]
        raw.rollback()
    finally:
        raw.close()
    return "\n".join(lines), float(plan["Execution Time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"jobs": args.jobs}
    with bench_database(ADMIN, URL_TEMPLATE) as url:
        store = JobStore(make_engine(url))
        print(f"filling {args.jobs:,} jobs …", flush=True)
        fill(store, args.jobs)
        results["tables"] = {name: size.__dict__ for name, size in store.table_sizes().items()}
        now = datetime.now(UTC)
        queries = {
            "a worker reads a job (and its cached answer)": lambda: store.get_with_cached("job-777", 86_400),
            "find a cached answer": lambda: store.find_cached("0" * 32, 86_400),
            "a batch's progress": lambda: store.batch_counts("batch-123"),
            "the sweeper's lost jobs": lambda: store.stale(now, now - timedelta(minutes=30)),
            "usage report, last day": lambda: store.usage_report(now - timedelta(days=1)),
            "prune, what is older than 30 days (dry run)": lambda: store.prune(now - timedelta(days=30), dry_run=True),
        }
        seen = record_statements(store)
        for label, call in queries.items():
            seen.clear()
            call()
            results[label] = []
            print(f"\n== {label}")
            for statement, parameters in list(seen):
                plan, ms = explain(store, statement, parameters)
                results[label].append({"statement": statement, "plan": plan, "ms": ms})
                print(f"-- {ms:.2f} ms\n{plan}")
        store.engine.dispose()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
