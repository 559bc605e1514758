"""Time to first token: a streamed generation through the cluster against the model alone.

    python ops/bench/stream.py [--n 20] [--json OUT.json]

The bundled SmolLM2 on 2 CPU threads, one chat request at temperature 0 (the same tokens every run), 32 new
tokens. ``alone``: the local backend called in this process, its streamer timed (no queue, no database, no
Redis). ``cluster``: ``Router.generate(…, stream=True)`` to one cpu worker (Redis broker, a fresh
PostgreSQL database), timed from before the submit to the first delta ``Job.stream()`` yields, and to its
last. Each is run N times one after another; the table gives p50 and p90 and the cluster/alone ratios of the
same run. The model alone runs first, then is released, so the two never share the cores.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llm_router.broker.catalogue import load_catalogue  # noqa: E402
from llm_router.broker.client import Router  # noqa: E402
from llm_router.broker.settings import Settings  # noqa: E402
from llm_router.tasks.schemas import GenerateRequest  # noqa: E402
from llm_router.workers.backends.local import LocalBackend  # noqa: E402
from llm_router.workers.bundled.prepare import prepare_models  # noqa: E402
from llm_router.workers.registry import ModelRegistry  # noqa: E402
from llm_router.workers.streaming import DELTAS  # noqa: E402
from ops.bench.cluster import Cluster, cluster_env  # noqa: E402
from ops.bench.database import ADMIN, URL_TEMPLATE, bench_database  # noqa: E402
from ops.bench.report import compare, percentile  # noqa: E402

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHAT = [{"role": "user", "content": "List five colours, one per line, and say why you like each."}]
MAX_TOKENS = 32


def summary(first: list[float], last: list[float]) -> dict[str, float]:
    return {
        "first_token_p50_ms": percentile(first, 0.5),
        "first_token_p90_ms": percentile(first, 0.9),
        "last_token_p50_ms": percentile(last, 0.5),
    }


def alone(models_dir: Path, n: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(2)
    catalogue = load_catalogue(None)
    backend = LocalBackend(ModelRegistry(catalogue, models_dir, "cpu"))
    request = GenerateRequest.model_validate({"messages": CHAT, "max_tokens": MAX_TOKENS, "temperature": 0})
    first: list[float] = []
    last: list[float] = []
    arrivals: list[float]
    for run in range(n + 2):  # two to warm up
        began, arrivals = time.perf_counter(), []
        token = DELTAS.set(lambda _delta, into=arrivals: into.append(time.perf_counter()))
        try:
            backend.generate(SMOL, request, catalogue.defaults)
        finally:
            DELTAS.reset(token)
        if run >= 2:
            first.append((arrivals[0] - began) * 1000)
            last.append((arrivals[-1] - began) * 1000)
    del backend
    gc.collect()
    return summary(first, last)


def through_cluster(settings: Settings, n: int) -> dict[str, float]:
    first: list[float] = []
    last: list[float] = []
    with Router(settings) as router:
        for run in range(n + 2):
            began = time.perf_counter()
            job = router.generate(messages=CHAT, max_tokens=MAX_TOKENS, temperature=0, stream=True, use_cache=False)
            arrivals = [time.perf_counter() for _delta in job.stream(120)]
            if run >= 2:
                first.append((arrivals[0] - began) * 1000)
                last.append((arrivals[-1] - began) * 1000)
    return summary(first, last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5", help="emptied before use")
    args = parser.parse_args()
    models_dir = Settings().models_dir
    prepare_models(models_dir)
    results: dict[str, Any] = {"n": args.n, "cores": os.cpu_count(), "max_tokens": MAX_TOKENS}
    print(f"alone: {args.n} streamed generations …", flush=True)
    results["alone"] = alone(models_dir, args.n)
    redis.Redis.from_url(args.redis).flushdb()
    work = Path(tempfile.mkdtemp(prefix="llmr-stream-"))
    with bench_database(ADMIN, URL_TEMPLATE) as database_url:
        env = cluster_env(args.redis, database_url, work, LLM_ROUTER_MODELS_DIR=str(models_dir), HF_HUB_OFFLINE="1")
        cluster = Cluster(env, work)
        settings = Settings(broker_url=args.redis, database_url=database_url, models_dir=models_dir)
        try:
            cluster.start("worker", "--pool", "cpu", "--queues", "fast", "--concurrency", "1", "--torch-threads", "2")
            print(f"cluster: {args.n} streamed generations …", flush=True)
            results["cluster"] = through_cluster(settings, args.n)
        finally:
            cluster.stop()
    rows = [
        ("first token p50 (ms)", "first_token_p50_ms"),
        ("first token p90 (ms)", "first_token_p90_ms"),
        ("last token p50 (ms)", "last_token_p50_ms"),
    ]
    compare(results, "alone", "cluster", rows, args.json)


if __name__ == "__main__":
    main()
