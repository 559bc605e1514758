"""The gateway's overhead, and what a tenant's limits cost it.

    python ops/bench/gateway.py [--parts overhead,admission] [--n 1000] [--clients 8] [--history 1000000]
                                [--json OUT.json]

overhead: the same embed requests through ``POST /v1/embeddings`` and through ``Router``. One cpu worker
(Redis broker, a fresh PostgreSQL database) and one gateway process (``llm-router serve``, one server
process). ``clients`` threads each send one-sentence embed requests one after another, each waiting for its
answer: through ``Router.embed(...).wait()`` in this process, then through the gateway with ``httpx``. The
table gives requests per second and p50/p95 latency for each, and gateway/Router ratios of the same run (the
worker, database and broker are the same for both).

admission: a tenant with ``history`` usage rows behind it, and two keys of it, one without limits and one
with a token budget (too large to run out). ``clients`` threads send ``n`` requests through each key, one
route at a time: ``GET /v1/models`` (a read) and ``POST /v1/jobs`` (a submission, not waited for; no worker
runs it). The table gives requests per second with the budget and without, and their ratio: what checking
the budget costs, for a tenant whose history is long.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llm_router.broker.client import Router  # noqa: E402
from llm_router.broker.settings import Settings  # noqa: E402
from llm_router.workers.bundled.prepare import prepare_models  # noqa: E402
from ops.bench.cluster import Cluster, cluster_env  # noqa: E402
from ops.bench.database import ADMIN, URL_TEMPLATE, bench_database  # noqa: E402
from ops.bench.report import compare, percentile  # noqa: E402


def drive(n: int, clients: int, one: Callable[[int], None]) -> dict[str, float]:
    """``n`` calls of ``one`` from ``clients`` threads; throughput and latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def client() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            began = time.perf_counter()
            one(index)
            elapsed = (time.perf_counter() - began) * 1000
            with lock:
                latencies.append(elapsed)

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    return {"requests_per_s": n / seconds, "p50_ms": percentile(latencies, 0.5), "p95_ms": percentile(latencies, 0.95)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="overhead,admission")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--history", type=int, default=1_000_000, help="usage rows of the admission part's tenant")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5", help="emptied before use")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results: dict[str, Any] = {"n": args.n, "clients": args.clients, "cores": os.cpu_count()}
    if "overhead" in parts:
        overhead(args, results)
    if "admission" in parts:
        admission(args, results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwritten {args.json}")


HISTORY_SQL = [
    """INSERT INTO jobs (id, kind, status, tier, queue, cached, attempts, tier_hops, created_at, finished_at, tenant)
       SELECT 'history-' || n, 'embed', 'succeeded', 'fast', 'fast', false, 1, 0, now() - interval '1 day',
              now() - interval '1 day', 'bench' FROM generate_series(1, %(rows)s) AS n""",
    """INSERT INTO usage (job_id, kind, tier, model, provider, prompt_tokens, completion_tokens, total_tokens,
                          cached, created_at, tenant)
       SELECT 'history-' || n, 'embed', 'fast', 'bench-model', 'local', 3, 0, 3, false, now() - interval '1 day',
              'bench' FROM generate_series(1, %(rows)s) AS n""",
    "ANALYZE jobs",
    "ANALYZE usage",
]


def admission(args: argparse.Namespace, results: dict[str, Any]) -> None:
    redis.Redis.from_url(args.redis).flushdb()
    work = Path(tempfile.mkdtemp(prefix="llmr-admission-"))
    with bench_database(ADMIN, URL_TEMPLATE) as database_url:
        print(f"admission: a tenant with {args.history:,} usage rows …", flush=True)
        with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as db:
            for statement in HISTORY_SQL:
                db.execute(statement, {"rows": args.history})
        env = cluster_env(args.redis, database_url, work)
        cluster = Cluster(env, work)
        settings = Settings(broker_url=args.redis, database_url=database_url)
        port = free_port()
        try:
            command = [sys.executable, "-m", "llm_router.cli.main", "serve", "--port", str(port)]
            cluster.start_command("gateway", command, "Application startup complete", REPO)
            with Router(settings) as router:
                plain, _ = router.store.create_key("bench")
                budgeted, _ = router.store.create_key("bench", budget_tokens=2_000_000_000)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                for route, call in (
                    ("GET /v1/models", lambda key, _: http.get("/v1/models", headers=key)),
                    (
                        "POST /v1/jobs",
                        lambda key, index: http.post(
                            "/v1/jobs", headers=key, json={"kind": "embed", "input": f"admitted {index}"}
                        ),
                    ),
                ):
                    for name, key in (("no limits", plain), ("a budget", budgeted)):
                        headers = {"Authorization": f"Bearer {key}"}

                        def one(index: int, headers: dict[str, str] = headers, call: Any = call) -> None:
                            call(headers, index).raise_for_status()

                        drive(20, args.clients, one)  # warm: connections, and the budget's counter
                        print(f"  {route}, {name}: {args.n} requests from {args.clients} threads …", flush=True)
                        results.setdefault("admission", {})[f"{route}, {name}"] = drive(args.n, args.clients, one)
        finally:
            cluster.stop()
    measured = results["admission"]
    print(f"\n{'':26} {'no limits':>10} {'a budget':>10} {'budget/none':>12}   ({args.history:,} usage rows)")
    for route in ("GET /v1/models", "POST /v1/jobs"):
        base, other = measured[f"{route}, no limits"], measured[f"{route}, a budget"]
        for label, key in (("requests/s", "requests_per_s"), ("p50 (ms)", "p50_ms")):
            ratio = other[key] / base[key] if base[key] else float("inf")
            print(f"{route + ' ' + label:26} {base[key]:10.1f} {other[key]:10.1f} {ratio:12.2f}")


def overhead(args: argparse.Namespace, results: dict[str, Any]) -> None:
    models_dir = Settings().models_dir
    prepare_models(models_dir)
    redis.Redis.from_url(args.redis).flushdb()
    work = Path(tempfile.mkdtemp(prefix="llmr-gateway-"))
    with bench_database(ADMIN, URL_TEMPLATE) as database_url:
        env = cluster_env(args.redis, database_url, work, LLM_ROUTER_MODELS_DIR=str(models_dir), HF_HUB_OFFLINE="1")
        cluster = Cluster(env, work)
        settings = Settings(broker_url=args.redis, database_url=database_url, models_dir=models_dir)
        port = free_port()
        try:
            cluster.start("worker", "--pool", "cpu", "--queues", "fast", "--concurrency", "1")
            command = [sys.executable, "-m", "llm_router.cli.main", "serve", "--port", str(port)]
            cluster.start_command("gateway", command, "Application startup complete", REPO)
            with Router(settings) as router:
                key, _ = router.store.create_key("bench")

                def direct(index: int) -> None:
                    router.embed(f"sentence {index} for the overhead benchmark", use_cache=False).wait(60)

                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                    headers = {"Authorization": f"Bearer {key}"}

                    def through_gateway(index: int) -> None:
                        body = {"model": "fast", "input": f"sentence {index} for the overhead benchmark (http)"}
                        response = http.post("/v1/embeddings", json=body, headers=headers)
                        response.raise_for_status()

                    drive(50, args.clients, direct)  # warm both paths
                    drive(50, args.clients, through_gateway)
                    print(f"Router: {args.n} embed requests from {args.clients} threads …", flush=True)
                    results["router"] = drive(args.n, args.clients, direct)
                    print(f"gateway: {args.n} embed requests from {args.clients} threads …", flush=True)
                    results["gateway"] = drive(args.n, args.clients, through_gateway)
        finally:
            cluster.stop()
    rows = [("requests/s", "requests_per_s"), ("p50 (ms)", "p50_ms"), ("p95 (ms)", "p95_ms")]
    compare(results, "router", "gateway", rows, None)


if __name__ == "__main__":
    main()
