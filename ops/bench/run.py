"""Benchmark the cluster against the model alone and against bare Celery, in one run on this machine.

    python ops/bench/run.py --n 10000 --json OUT.json [--parts embed,latency,noop,generate]

Uses the real Redis (broker, one database emptied first) and a fresh PostgreSQL database it drops after.
Every figure is measured in this run:

(a) the model alone: MiniLM-L6 embedding N sentences (8-20 words), in batches of 64 sorted by length as
    sentence-transformers' ``encode`` does, in the better of two configurations: one process of two torch
    threads, and two processes of one thread each (half the sentences each); the reference;
(b) the same N sentences through the cluster as one job per sentence (``Router.batch``, one worker pool
    serving both lanes), from the first submission to the last job recorded in PostgreSQL;
(c) the same as N/64 jobs of 64 inputs each;
(d) no-op jobs per second through the whole path (enqueue → worker → job, attempt and usage rows in
    PostgreSQL), on the ``echo`` provider, submitted as a bulk batch; and submitted one by one as interactive
    jobs (first submission to last record, as (e) is measured), then the same with each job waited for;
(e) a bare Celery no-op task on the same broker (Celery's defaults, JSON, one prefork process);
(f) p95 latency (created → recorded) of single interactive embed jobs submitted every 50 ms while a bulk
    batch of N embed jobs runs, and (g) the same on an idle cluster. Measured twice: with one worker
    serving both lanes, and with a worker per lane (the bulk one at niceness 10) on the same two cores;
(h) generation: SmolLM2 tokens per second through the cluster, one job at a time (greedy) and 8 jobs at once
    (sampled; the worker batches them), against ``model.generate`` in this process on one prompt and on 8
    prompts together, the two sides measured in turns.

It prints a table and writes JSON with every figure and the ratios ``embed_per_job_ratio`` = b/a,
``embed_batched_ratio`` = c/a, ``noop_vs_celery_ratio`` = d/e, ``noop_one_by_one_ratio``,
``interactive_p95_ratio`` = f/g and ``generate_ratio`` / ``generate_batched_ratio``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llm_router.broker.client import Router  # noqa: E402
from llm_router.broker.settings import Settings  # noqa: E402
from llm_router.workers.bundled.prepare import MINILM_ID, prepare_models  # noqa: E402
from ops.bench.cluster import Cluster  # noqa: E402
from ops.bench.database import ADMIN, URL_TEMPLATE, bench_database  # noqa: E402
from ops.bench.generating import generation  # noqa: E402
from ops.bench.quantization import sentences  # noqa: E402

# One pool for (b), (c) and the one-worker latency: a process per core, one torch thread each (on two
# cores this beats one process of two threads: a process's database work overlaps the other's model).
# Per lane: the interactive worker keeps one thread (OpenMP threads that wait for each other stall when
# another process holds a core); the bulk worker runs at niceness 10 (its default).
WORKERS = {
    "one_pool": ["--queues", "fast", "--concurrency", "2"],
    "interactive_lane": ["--queues", "fast", "--lanes", "interactive", "--torch-threads", "1"],
    "bulk_lane": ["--queues", "fast", "--lanes", "bulk", "--concurrency", "2"],
    "noop": ["--queues", "noop"],
    # One process: at its defaults for one job at a time; for 8 jobs at once, waiting up to 200 ms for the
    # jobs submitted together (a job is taken as it arrives, so with no wait the first would run alone).
    "generate": ["--queues", "fast", "--concurrency", "1"],
    "generate_batched": ["--queues", "fast", "--concurrency", "1", "--max-wait-ms", "200"],
}

ECHO_TIER = """
[tiers.noop]
pool = "cpu"
generate = ["echo"]
embed = ["echo"]
classify = ["echo"]

[models.echo]
provider = "echo"
"""


def _load_minilm(models_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    path = models_dir / MINILM_ID
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def _embed_alone(texts: list[str], loaded: tuple[Any, Any], threads: int, batch_size: int = 64) -> float:
    """Seconds for one process of ``threads`` torch threads to embed ``texts`` (after a warm-up batch)."""
    import torch

    torch.set_num_threads(threads)
    tokenizer, model = loaded
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    with torch.inference_mode():  # warm-up, as a running worker is warm
        model(**tokenizer(texts[:batch_size], padding=True, truncation=True, return_tensors="pt"))
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = tokenizer(
                [texts[i] for i in order[start : start + batch_size]],
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), p=2, dim=1)
    return time.perf_counter() - started


def _embed_alone_in_child(texts: list[str], models_dir: Path, ready: Any, go: Any, out: Any) -> None:
    import torch

    torch.set_num_threads(1)
    loaded = _load_minilm(models_dir)
    ready.put(True)  # the children load first, then start together: loading is not part of the time
    go.wait()
    out.put(_embed_alone(texts, loaded, threads=1))


def model_alone(texts: list[str], models_dir: Path) -> dict[str, float]:
    """The reference: the faster of one process of all cores' threads and one single-threaded process per
    core (each embedding its share), so that no ratio passes because the reference ran in its slower form."""
    cores = os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    one_process = len(texts) / _embed_alone(texts, _load_minilm(models_dir), threads=cores)
    ready, go, out = context.Queue(), context.Event(), context.Queue()
    shares = [texts[i::cores] for i in range(cores)]
    children = [
        context.Process(target=_embed_alone_in_child, args=(share, models_dir, ready, go, out)) for share in shares
    ]
    for child in children:
        child.start()
    for _ in children:
        ready.get(timeout=300)
    started = time.perf_counter()
    go.set()
    per_child = [out.get(timeout=1800) for _ in children]
    wall = time.perf_counter() - started
    for child in children:
        child.join()
    processes = len(texts) / max(wall, max(per_child))
    return {"per_s": max(one_process, processes), "one_process_per_s": one_process, "processes_per_s": processes}


def last_finished(database_url: str, batch_id: str) -> tuple[int, float]:
    """How many jobs of the batch succeeded, and when the last was recorded (epoch seconds)."""
    engine = create_engine(database_url)
    with engine.connect() as connection:
        count, last = connection.execute(
            text(
                "SELECT count(*), extract(epoch FROM max(finished_at)) FROM jobs "
                "WHERE batch_id = :b AND status = 'succeeded'"
            ),
            {"b": batch_id},
        ).one()
    engine.dispose()
    return int(count), float(last or 0.0)


def run_batch(router: Router, requests: list[dict[str, Any]], chunk: int, timeout_s: float) -> dict[str, float]:
    """Submit ``requests`` as one bulk batch in chunks; return the rate from first submission to last record."""
    batch_id = str(uuid.uuid4())
    started = time.time()
    for start in range(0, len(requests), chunk):
        submitted = router.batch(requests[start : start + chunk], batch_id=batch_id)
        if submitted.errors:
            raise RuntimeError(f"invalid benchmark requests: {list(submitted.errors.values())[:3]}")
    submit_s = time.time() - started
    deadline = time.monotonic() + timeout_s
    while router.batch_progress(batch_id).get("succeeded", 0) < len(requests):
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch not done after {timeout_s}s: {router.batch_progress(batch_id)}")
        time.sleep(0.25)
    count, last = last_finished(str(router.settings.database_url), batch_id)
    seconds = last - started
    inputs = sum(len(r["input"]) if isinstance(r["input"], list) else 1 for r in requests)
    return {"jobs": count, "inputs": inputs, "submit_s": submit_s, "seconds": seconds, "per_s": inputs / seconds}


def interactive_latencies(router: Router, count: int, every_s: float, until: threading.Event | None) -> list[float]:
    """Submit single interactive embed jobs every ``every_s`` (``count`` of them, or until ``until`` is set),
    and return their latencies (ms, created → recorded)."""
    jobs = []
    for i in range(count):
        if until is not None and until.is_set():
            break
        jobs.append(router.embed(f"An interactive request number {i} from a web page.", use_cache=False))
        time.sleep(every_s)
    latencies = []
    for job in jobs:
        job.wait(timeout=300)
        latencies.append(float(job.record().latency_ms or 0.0))
    return latencies


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _bulk_producer(settings: dict[str, Any], requests: list[dict[str, Any]], chunk: int, out: Any) -> None:
    with Router(Settings(**settings)) as router:
        out.put(run_batch(router, requests, chunk, timeout_s=1800))


def latency_under_bulk(router: Router, bulk: list[dict[str, Any]], chunk: int) -> dict[str, float]:
    """Interactive latency on an idle cluster, then while a bulk batch runs. The batch is submitted by a
    process of its own, as a batch job and a web backend are in production (and share no interpreter lock)."""
    interactive_latencies(router, 10, 0.05, None)  # warm-up: first calls of a fresh process are slow
    idle = interactive_latencies(router, 100, 0.05, None)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    settings = router.settings.model_dump(include={"broker_url", "database_url", "config", "models_dir"})
    producer = context.Process(target=_bulk_producer, args=(settings, bulk, chunk, out))
    producer.start()
    done = threading.Event()
    figures: dict[str, Any] = {}

    def collect() -> None:
        figures.update(out.get())
        done.set()

    collector = threading.Thread(target=collect)
    collector.start()
    time.sleep(1.0)  # the bulk batch is recorded and queued first
    busy = interactive_latencies(router, 100_000, 0.05, done)
    collector.join()
    producer.join()
    return {
        "idle_p95_ms": p95(idle),
        "idle_p50_ms": statistics.median(idle),
        "busy_p95_ms": p95(busy),
        "busy_p50_ms": statistics.median(busy),
        "busy_samples": len(busy),
        "bulk_per_s": figures["per_s"],
    }


def bare_celery(env: dict[str, str], broker: str, n: int, cluster: Cluster) -> dict[str, float]:
    os.environ["BENCH_BROKER_URL"] = broker
    from ops.bench.bare_celery import COUNTER, app

    client = redis.Redis.from_url(broker)
    client.delete(COUNTER)
    command = [sys.executable, "-m", "celery", "-A", "bare_celery", "worker", "-c", "1", "--pool", "prefork"]
    command += ["--without-gossip", "--without-mingle", "-l", "INFO"]
    cluster.start_command("bare-celery", command, "ready.", REPO / "ops" / "bench")
    started = time.time()
    for _ in range(n):
        app.send_task("bench.noop")
    submit_s = time.time() - started
    deadline = time.monotonic() + 600
    while int(client.get(COUNTER) or 0) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("bare Celery tasks not done after 600 s")
        time.sleep(0.01)
    seconds = time.time() - started
    cluster.stop()
    return {"tasks": n, "submit_s": submit_s, "seconds": seconds, "per_s": n / seconds}


PARTS = ("embed", "latency", "noop", "generate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5", help="emptied before use")
    parser.add_argument("--pg-admin", default=ADMIN)
    parser.add_argument("--pg-url", default=URL_TEMPLATE)
    parser.add_argument("--chunk", type=int, default=1000, help="requests per Router.batch call")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which to run, of {','.join(PARTS)}")
    args = parser.parse_args()
    n, parts = args.n, set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"--parts: unknown {sorted(parts - set(PARTS))}; choose from {','.join(PARTS)}")

    models_dir = Settings().models_dir
    prepare_models(models_dir)
    texts = sentences(n)
    results: dict[str, Any] = {"n": n, "cores": os.cpu_count(), "workers": WORKERS, "parts": sorted(parts)}
    if "embed" in parts:
        print(f"(a) model alone: {n} sentences, both configurations …", flush=True)
        a_before = model_alone(texts, models_dir)

    redis.Redis.from_url(args.redis).flushdb()
    work = Path(tempfile.mkdtemp(prefix="llmr-bench-"))
    catalogue = work / "catalogue.toml"
    catalogue.write_text((REPO / "broker" / "catalogue.toml").read_text() + ECHO_TIER)
    with bench_database(args.pg_admin, args.pg_url) as database_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_ROUTER_")}
        env.update(
            LLM_ROUTER_BROKER_URL=args.redis,
            LLM_ROUTER_DATABASE_URL=database_url,
            LLM_ROUTER_CONFIG=str(catalogue),
            LLM_ROUTER_MODELS_DIR=str(models_dir),
            LLM_ROUTER_VAR_DIR=str(work / "var"),
            HF_HUB_OFFLINE="1",
            BENCH_BROKER_URL=args.redis,
            PYTHONPATH=str(REPO),
        )
        settings = Settings(broker_url=args.redis, database_url=database_url, config=catalogue, models_dir=models_dir)
        cluster = Cluster(env, work)
        with Router(settings) as router:
            try:
                one_each = [{"kind": "embed", "input": t, "tier": "fast", "use_cache": False} for t in texts]
                if parts & {"embed", "latency"}:
                    cluster.start("shared", *WORKERS["one_pool"])
                if "embed" in parts:
                    of_64 = [
                        {"kind": "embed", "input": texts[i : i + 64], "tier": "fast", "use_cache": False}
                        for i in range(0, n, 64)
                    ]
                    print("(b) one job per sentence …", flush=True)
                    results["embed_per_job"] = run_batch(router, one_each, args.chunk, 1800)
                    print("(c) jobs of 64 inputs …", flush=True)
                    results["embed_batched"] = run_batch(router, of_64, args.chunk, 1800)
                if "latency" in parts:
                    print("(f, g) interactive latency, one worker for both lanes …", flush=True)
                    results["latency_one_worker"] = latency_under_bulk(router, one_each, args.chunk)
                    cluster.stop()
                    cluster.start("interactive", *WORKERS["interactive_lane"])
                    cluster.start("bulk", *WORKERS["bulk_lane"])
                    print("(f, g) interactive latency, a worker per lane …", flush=True)
                    results["latency_worker_per_lane"] = latency_under_bulk(router, one_each, args.chunk)
                cluster.stop()
                if "embed" in parts:
                    # The same on a worker of the bulk lane only, which sorts a wider window of inputs by length.
                    cluster.start("bulk_only", *WORKERS["bulk_lane"])
                    print("(b, c) again on a worker of the bulk lane only …", flush=True)
                    results["embed_per_job_bulk_lane"] = run_batch(router, one_each, args.chunk, 1800)
                    results["embed_batched_bulk_lane"] = run_batch(router, of_64, args.chunk, 1800)
                    cluster.stop()
                if "noop" in parts:
                    noop_figures(router, cluster, env, args.redis, n, args.chunk, results)
                if "generate" in parts:
                    print("(h) generation, through the cluster and model.generate alone in turns …", flush=True)
                    results["generate"] = generation(
                        router, cluster, settings, catalogue, WORKERS["generate"], WORKERS["generate_batched"]
                    )
            finally:
                cluster.stop()

    if "embed" in parts:
        # The machine's speed drifts over minutes: the reference is the mean of a run before and one after.
        print("(a) model alone, again …", flush=True)
        a_after = model_alone(texts, models_dir)
        results["model_alone"] = {
            "per_s": (a_before["per_s"] + a_after["per_s"]) / 2,
            "before": a_before,
            "after": a_after,
        }
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwritten {args.json}")


def noop_figures(
    router: Router, cluster: Cluster, env: dict[str, str], broker: str, n: int, chunk: int, results: dict[str, Any]
) -> None:
    cluster.start("noop", *WORKERS["noop"])
    print("(d) no-op jobs …", flush=True)
    noop = [{"kind": "classify", "input": f"no-op {i}", "tier": "noop", "use_cache": False} for i in range(n)]
    results["noop_bulk"] = run_batch(router, noop, chunk, 1800)
    results["noop_interactive"] = one_by_one(router, min(n, 2000))
    cluster.stop()
    print("(e) bare Celery no-op tasks …", flush=True)
    results["bare_celery"] = bare_celery(env, broker, n, cluster)


def one_by_one(router: Router, count: int) -> dict[str, float]:
    """No-op jobs submitted one by one as interactive jobs, measured as bare Celery is: from the first submission
    to the last job recorded (``per_s``). Then as many again, each waited for by its caller once all were
    submitted (``with_waits_per_s``), which adds a read of its record per job on the caller's side."""
    engine = create_engine(str(router.settings.database_url))
    since = text(
        "SELECT count(*), extract(epoch FROM max(finished_at)) FROM jobs "
        "WHERE tier = 'noop' AND batch_id IS NULL AND status = 'succeeded' AND created_at >= to_timestamp(:t)"
    )
    started = time.time()
    for i in range(count):
        router.classify(f"single no-op {i}", tier="noop", use_cache=False)
    submit_s = time.time() - started
    deadline = time.monotonic() + 600
    while True:
        with engine.connect() as connection:
            done, last = connection.execute(since, {"t": started}).one()
        if done >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"one-by-one no-op jobs: {done} of {count} ended after 600 s")
        time.sleep(0.05)
    engine.dispose()
    started_waits = time.time()
    waited = [router.classify(f"waited no-op {i}", tier="noop", use_cache=False) for i in range(count)]
    for job in waited:
        job.wait(timeout=600)
    return {
        "jobs": count,
        "submit_s": submit_s,
        "per_s": count / (float(last) - started),
        "with_waits_per_s": count / (time.time() - started_waits),
    }


def print_table(results: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str]] = []
    if "model_alone" in results:
        a = results["model_alone"]
        results["embed_per_job_ratio"] = results["embed_per_job"]["per_s"] / a["per_s"]
        results["embed_batched_ratio"] = results["embed_batched"]["per_s"] / a["per_s"]
        before, after = a["before"], a["after"]
        rows += [
            ("(a) model alone, batch 64", f"{a['per_s']:.0f} sentences/s",
             f"reference: better of 1 process of {results['cores']} threads "
             f"({before['one_process_per_s']:.0f}, {after['one_process_per_s']:.0f}) and {results['cores']} "
             f"processes of 1 ({before['processes_per_s']:.0f}, {after['processes_per_s']:.0f}), before and after"),
            ("(b) one job per sentence", f"{results['embed_per_job']['per_s']:.0f} sentences/s",
             f"b/a = {results['embed_per_job_ratio']:.2f} (target ≥ 0.9)"),
            ("(c) jobs of 64 inputs", f"{results['embed_batched']['per_s']:.0f} sentences/s",
             f"c/a = {results['embed_batched_ratio']:.2f} (target ≥ 0.95)"),
        ]  # fmt: skip
        if "embed_per_job_bulk_lane" in results:
            for name, label in (("embed_per_job", "(b)"), ("embed_batched", "(c)")):
                figure = results[f"{name}_bulk_lane"]["per_s"]
                results[f"{name}_bulk_lane_ratio"] = figure / a["per_s"]
                rows.append((f"{label} on a worker of the bulk lane", f"{figure:.0f} sentences/s",
                             f"/a = {figure / a['per_s']:.2f} (--lanes bulk: a window of 1,024 inputs)"))  # fmt: skip
    if "bare_celery" in results:
        e = results["bare_celery"]["per_s"]
        results["noop_vs_celery_ratio"] = results["noop_bulk"]["per_s"] / e
        results["noop_one_by_one_ratio"] = results["noop_interactive"]["per_s"] / e
        rows += [
            ("(d) no-op jobs, bulk batch", f"{results['noop_bulk']['per_s']:.0f} jobs/s",
             f"d/e = {results['noop_vs_celery_ratio']:.2f} (target ≥ 0.5)"),
            ("    no-op jobs, one by one", f"{results['noop_interactive']['per_s']:.0f} jobs/s",
             f"/e = {results['noop_one_by_one_ratio']:.2f} (target ≥ 0.6)"),
            ("    the same, each waited for", f"{results['noop_interactive']['with_waits_per_s']:.0f} jobs/s",
             f"/e = {results['noop_interactive']['with_waits_per_s'] / e:.2f}"),
            ("(e) bare Celery no-op", f"{e:.0f} tasks/s", "reference"),
        ]  # fmt: skip
    if "latency_one_worker" in results:
        split, shared = results["latency_worker_per_lane"], results["latency_one_worker"]
        results["interactive_p95_ratio"] = split["busy_p95_ms"] / split["idle_p95_ms"]
        results["interactive_p95_ratio_one_worker"] = shared["busy_p95_ms"] / shared["idle_p95_ms"]
        rows += [
            ("(g) idle p95, worker per lane", f"{split['idle_p95_ms']:.0f} ms", f"p50 {split['idle_p50_ms']:.0f} ms"),
            ("(f) p95 under bulk, worker per lane", f"{split['busy_p95_ms']:.0f} ms",
             f"f/g = {results['interactive_p95_ratio']:.2f} (target ≤ 2), {split['busy_samples']} jobs"),
            ("(g) idle p95, one worker", f"{shared['idle_p95_ms']:.0f} ms", f"p50 {shared['idle_p50_ms']:.0f} ms"),
            ("(f) p95 under bulk, one worker", f"{shared['busy_p95_ms']:.0f} ms",
             f"f/g = {results['interactive_p95_ratio_one_worker']:.2f}, {shared['busy_samples']} jobs"),
        ]  # fmt: skip
    if "generate" in results:
        g = results["generate"]
        results["generate_ratio"] = g["cluster_tokens_per_s"] / g["tokens_per_s"]
        results["generate_batched_ratio"] = g["cluster_batched_tokens_per_s"] / g["batched_tokens_per_s"]
        same = "the same tokens" if g["same_tokens"] else "NOT the same tokens"
        rows += [
            ("(h) model.generate alone, 1 prompt", f"{g['tokens_per_s']:.1f} tokens/s", f"reference, greedy, {same}"),
            ("    through the cluster, 1 job", f"{g['cluster_tokens_per_s']:.1f} tokens/s",
             f"ratio {results['generate_ratio']:.2f} (target ≥ 0.9)"),
            ("    model.generate alone, 8 prompts", f"{g['batched_tokens_per_s']:.1f} tokens/s", "reference, sampled"),
            ("    through the cluster, 8 jobs", f"{g['cluster_batched_tokens_per_s']:.1f} tokens/s",
             f"ratio {results['generate_batched_ratio']:.2f}"),
        ]  # fmt: skip
    width = max((len(r[0]) for r in rows), default=0)
    print(f"\nN = {results['n']}, {results['cores']} cores")
    for label, figure, note in rows:
        print(f"{label:<{width}}  {figure:>18}  {note}")


if __name__ == "__main__":
    main()
