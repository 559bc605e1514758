"""The gateway's overhead: the same embed requests through ``POST /v1/embeddings`` and through ``Router``.

    python ops/bench/gateway.py [--n 1000] [--clients 8] [--json OUT.json]

One cpu worker (Redis broker, a fresh PostgreSQL database) and one gateway process (``llm-router serve``, one
server process). ``clients`` threads each send one-sentence embed requests one after another, each waiting for
its answer: through ``Router.embed(...).wait()`` in this process, then through the gateway with
``httpx``. The table gives requests per second and p50/p95 latency for each, and gateway/Router ratios of
the same run (the worker, database and broker are the same for both).
"""

from __future__ import annotations

import argparse
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
import redis

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from broker.client import Router  # noqa: E402
from broker.settings import Settings  # noqa: E402
from ops.bench.cluster import Cluster, cluster_env  # noqa: E402
from ops.bench.database import ADMIN, URL_TEMPLATE, bench_database  # noqa: E402
from ops.bench.report import compare, percentile  # noqa: E402
from workers.bundled.prepare import prepare_models  # noqa: E402


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
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5", help="emptied before use")
    args = parser.parse_args()
    models_dir = Settings().models_dir
    prepare_models(models_dir)
    redis.Redis.from_url(args.redis).flushdb()
    work = Path(tempfile.mkdtemp(prefix="llmr-gateway-"))
    results: dict[str, Any] = {"n": args.n, "clients": args.clients, "cores": os.cpu_count()}
    with bench_database(ADMIN, URL_TEMPLATE) as database_url:
        env = cluster_env(args.redis, database_url, work, LLM_ROUTER_MODELS_DIR=str(models_dir), HF_HUB_OFFLINE="1")
        cluster = Cluster(env, work)
        settings = Settings(broker_url=args.redis, database_url=database_url, models_dir=models_dir)
        port = free_port()
        try:
            cluster.start("worker", "--pool", "cpu", "--queues", "fast", "--concurrency", "1")
            command = [sys.executable, "-m", "broker.cli.main", "serve", "--port", str(port)]
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
    compare(results, "router", "gateway", rows, args.json)


if __name__ == "__main__":
    main()
