"""Benchmark the remote pool against a plain asyncio HTTP client, on stand-in APIs on 127.0.0.1, in one run.

    python ops/bench/remote.py --json OUT.json [--n 2000] [--delay-ms 500] [--engines asyncio,threads]
                               [--processes N] [--concurrency N] [--callers 200] [--one-by-one 200]

Uses the real Redis (broker, one database emptied first) and a fresh PostgreSQL database it drops after.

(h)  N chat jobs, submitted one by one as a web backend does, on a tier whose model is an OpenAI-compatible
     stand-in answering every call after ``--delay-ms``; one ``llm-router worker --pool remote`` at its
     defaults, once per ``--engines`` (the event loops, then Celery's threads pool, one worker at a time);
     from the first submission to the last job recorded. The references, measured in the same run
     against the same stand-in, each with as many calls at a time as the worker has slots (its processes
     times its --concurrency; ``--references-at-once`` to say otherwise): a bare aiohttp
     client (``chat_ratio``: h / aiohttp), ``httpx.AsyncClient`` on its default transport, httpx over
     aiohttp's transport, LiteLLM's ``Router.acompletion`` (``ops/bench/reference_clients.py``; a row whose
     library is not installed is skipped with a message), and the stand-in's ceiling over bare asyncio
     keep-alive connections. Every row gives calls/s, the whole machine's CPU ms per call (producer, worker,
     Redis, PostgreSQL and the stand-in together) and p50/p95 latency over the stand-in's delay; the
     cluster's rows also the producer's CPU (this process: submitting and waiting) and the worker's (its
     processes) per job. The worker's RSS is sampled while its slots are busy.
(h'') on the first engine's worker, N chat jobs from ``--callers`` coroutines of one ``AsyncRouter`` (a web
     backend's event loop), each submitting a job, awaiting it, then the next.
(h') on the first engine's worker, the same N jobs when 10 % of calls answer 503 and 5 % answer 429
     (``Retry-After: 1``), retry delays at a tenth of the policy's and up to 6 retries a model, on a tier
     limited to ``LIMITED_RPM`` calls a minute (fewer than the run makes, so the limit binds and jobs are
     deferred): every job must succeed, with one usage row each, and no 60 s span may see more calls arrive
     at the stand-in than the limit.
(k)  on the first engine's worker, ``--one-by-one`` jobs one at a time, each submitted once the one before
     it was waited for: submit → ``wait()`` p50 and p95 over the stand-in's delay (run with ``--delay-ms 0``
     for the interactive path's own cost).
(i)  ``--inputs`` embed inputs, one per job, as one bulk batch to a TEI stand-in taking at most 32 inputs a
     call and answering after 20 ms, 4 calls at a time (its own limit: 4 calls of 32 inputs every 20 ms,
     6,400 inputs/s): HTTP calls against inputs/32, and inputs/s against that limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llm_router import AsyncRouter, JobFailed  # noqa: E402
from llm_router.broker.client import Router  # noqa: E402
from llm_router.broker.counters import deferrals  # noqa: E402
from llm_router.broker.settings import Settings  # noqa: E402
from ops.bench.cluster import Cluster, cluster_env  # noqa: E402
from ops.bench.database import ADMIN, URL_TEMPLATE, bench_database  # noqa: E402
from ops.bench.reference_clients import CLIENTS, MESSAGES, figures, machine_cpu_s, measure  # noqa: E402
from ops.bench.report import percentile  # noqa: E402
from ops.bench.stand_in import Behaviour  # noqa: E402
from ops.bench.stand_in import start as start_stand_in  # noqa: E402

CHAT, TEI = "stand-in/chat", "stand-in/tei"
LIMITED_RPM = 1500  # (h')'s tier: about half the calls the run makes (2,000 jobs and their retries)
TEI_PER_CALL, TEI_CALL_S, TEI_AT_ONCE = 32, 0.020, 4
CONCURRENCY = 200  # the remote pool's default --concurrency (a process's calls in flight)


def catalogue(url: str) -> str:
    return f"""
default_tier = "api"
tier_order = ["api", "limited"]
{api_tier(url)}
[tiers.limited]
pool = "remote"
generate = ["{CHAT}"]
requests_per_minute = {LIMITED_RPM}
"""


def most_in_any_window(arrivals: list[float], window_s: float) -> int:
    """The most arrivals in any span of ``window_s`` seconds (a moving window, as the limiter's)."""
    times, most, first = sorted(arrivals), 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def api_tier(url: str) -> str:
    """A tier ``api`` on the remote pool whose models are the stand-in's chat and TEI embeddings."""
    return f"""
[tiers.api]
pool = "remote"
generate = ["{CHAT}"]
embed = ["{TEI}"]
[models."{CHAT}"]
provider = "openai"
base_url = "{url}"
[models."{TEI}"]
provider = "tei"
base_url = "{url}"
max_inputs_per_call = {TEI_PER_CALL}
"""


def slots(engine: str, processes: int | None, concurrency: int | None) -> int:
    """The calls a worker has in flight at most: --concurrency per event-loop process, or per threads pool."""
    per_process = concurrency or CONCURRENCY
    return per_process * (processes or os.cpu_count() or 1) if engine == "asyncio" else per_process


def control(url: str, **values: Any) -> dict[str, Any]:
    if values:
        httpx.post(f"{url}/control", json=values, timeout=10).raise_for_status()
    return httpx.get(f"{url}/stats", timeout=10).json()  # type: ignore[no-any-return]


async def raw_client(url: str, n: int, at_once: int) -> dict[str, float]:
    """The stand-in's own ceiling: ``at_once`` keep-alive connections of bare asyncio HTTP/1.1, no library."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": CHAT, "messages": MESSAGES, "max_tokens": 10}).encode()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: stand-in\r\nContent-Type: application/json\r\n"
    request += b"Content-Length: %d\r\n\r\n" % len(body) + body
    left = [n]
    cpu = machine_cpu_s()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while left[0] > 0:
            left[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(at_once)))
    seconds = time.perf_counter() - started
    return {"calls": n, "seconds": seconds, "per_s": n / seconds, "cpu_ms_per_call": (machine_cpu_s() - cpu) * 1e3 / n}


def cpu_s_of(pid: int) -> float:
    """The CPU seconds a worker has used: its process and every process it started (the event loops)."""
    import psutil

    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def cpu_marks(worker_pid: int) -> tuple[float, float, float]:
    """CPU seconds so far: the whole machine's, this process's (the producer's) and the worker's."""
    return machine_cpu_s(), time.process_time(), cpu_s_of(worker_pid)


def cpu_spent(since: tuple[float, float, float], worker_pid: int, jobs: int) -> tuple[float, dict[str, float]]:
    """The machine's CPU seconds since ``since``, and the producer's and the worker's CPU ms a job."""
    machine, producer, worker = (now - then for now, then in zip(cpu_marks(worker_pid), since, strict=True))
    return machine, {"producer_cpu_ms_per_job": producer * 1e3 / jobs, "worker_cpu_ms_per_job": worker * 1e3 / jobs}


def rss_mb(pid: int) -> float:
    """The resident memory of a worker: its process and every process it started (the event loops)."""
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def chat_jobs(router: Router, database_url: str, n: int, worker_pid: int, tier: str = "api") -> dict[str, Any]:
    import psutil

    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            try:
                peak[0] = max(peak[0], rss_mb(worker_pid))
            except (FileNotFoundError, ProcessLookupError, psutil.Error):  # the worker is gone: the run reports it
                return

    sampler = threading.Thread(target=sample)
    sampler.start()
    marker = str(uuid.uuid4())
    marks, started = cpu_marks(worker_pid), time.time()
    jobs = [
        router.generate(messages=[{"role": "user", "content": f"{marker} question {i}"}], max_tokens=10,
                        use_cache=False, tier=tier)
        for i in range(n)
    ]  # fmt: skip
    submit_s = time.time() - started
    failed = 0
    for job in jobs:
        try:
            job.wait(timeout=1800)
        except JobFailed:
            failed += 1  # counted: "every job succeeded" is a figure of the run, not an assumption
    cpu_s, split = cpu_spent(marks, worker_pid, n)
    stop.set()
    sampler.join()
    engine = create_engine(database_url)
    with engine.connect() as connection:
        last, usage_rows, attempts = connection.execute(
            text(
                "SELECT extract(epoch FROM max(j.finished_at)), "
                "(SELECT count(*) FROM usage u JOIN jobs k ON k.id = u.job_id WHERE k.request::text LIKE :m), "
                "(SELECT count(*) FROM attempts a JOIN jobs k ON k.id = a.job_id WHERE k.request::text LIKE :m) "
                "FROM jobs j WHERE j.request::text LIKE :m AND j.status = 'succeeded'"
            ),
            {"m": f"%{marker}%"},
        ).one()
        latencies = [
            float(row[0]) / 1000.0
            for row in connection.execute(
                text("SELECT latency_ms FROM jobs WHERE request::text LIKE :m AND status = 'succeeded'"),
                {"m": f"%{marker}%"},
            )
        ]
    engine.dispose()
    seconds = float(last) - started
    return {
        **{key: value for key, value in figures(n, seconds, cpu_s, latencies).items() if key != "calls"},
        "jobs": n,
        "succeeded": n - failed,
        "usage_rows": int(usage_rows),
        "attempts": int(attempts),
        "submit_s": submit_s,
        **split,
        "worker_peak_rss_mb": peak[0],
    }


def embed_batch(router: Router, url: str, inputs: int) -> dict[str, Any]:
    control(url, reset=True)
    requests = [
        {"kind": "embed", "input": [f"sentence {i} " + "word " * (i % 13)], "use_cache": False} for i in range(inputs)
    ]
    batch_id = str(uuid.uuid4())
    started = time.time()
    router.batch(requests, batch_id=batch_id)  # one batch: its bulk messages are full, so their calls are too
    while router.batch_progress(batch_id).get("succeeded", 0) < inputs:
        time.sleep(0.25)
    seconds = time.time() - started
    sizes = control(url)["embed_sizes"]
    limit = TEI_AT_ONCE * TEI_PER_CALL / TEI_CALL_S
    return {
        "inputs": inputs,
        "http_calls": len(sizes),
        "calls_floor": -(-inputs // TEI_PER_CALL),
        "largest_call": max(sizes),
        "seconds": seconds,
        "inputs_per_s": inputs / seconds,
        "stand_in_limit_per_s": limit,
        "ratio_to_limit": inputs / seconds / limit,
    }


def async_callers(settings: Settings, n: int, callers: int, worker_pid: int) -> dict[str, Any]:
    """(h'') A web backend's event loop: ``callers`` coroutines of one ``AsyncRouter``, each submitting a chat
    job, awaiting it, then the next, until ``n`` ran; latency is submit → ``wait()``."""

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        failed = 0
        async with AsyncRouter(settings) as router:
            left = iter(range(n))
            marker = uuid.uuid4()

            async def caller() -> None:
                nonlocal failed
                for i in left:
                    began = time.perf_counter()
                    job = await router.generate(messages=[{"role": "user", "content": f"{marker} {i}"}],
                                                max_tokens=10, use_cache=False)  # fmt: skip
                    try:
                        await job.wait(timeout=600)
                    except JobFailed:
                        failed += 1
                    latencies.append(time.perf_counter() - began)

            marks, started = cpu_marks(worker_pid), time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(callers)))
            seconds = time.perf_counter() - started
            cpu_s, split = cpu_spent(marks, worker_pid, n)
        return {
            **{key: value for key, value in figures(n, seconds, cpu_s, latencies).items() if key != "calls"},
            "jobs": n,
            "callers": callers,
            "succeeded": n - failed,
            **split,
        }

    return asyncio.run(run())


def one_at_a_time(router: Router, n: int, delay_ms: float) -> dict[str, Any]:
    """(k) An interactive caller: one job, submitted and waited for, then the next; submit → ``wait()`` over
    the stand-in's own time."""
    over: list[float] = []
    for i in range(n):
        began = time.perf_counter()
        job = router.generate(messages=[{"role": "user", "content": f"{uuid.uuid4()} {i}"}], max_tokens=10,
                              use_cache=False)  # fmt: skip
        job.wait(timeout=60)
        over.append((time.perf_counter() - began) * 1000.0 - delay_ms)
    return {"jobs": n, "p50_ms_over_delay": percentile(over, 0.5), "p95_ms_over_delay": percentile(over, 0.95)}


def failing_and_bulk(
    router: Router, url: str, database_url: str, worker_pid: int, args: argparse.Namespace, results: dict[str, Any]
) -> None:
    """(h') and (i), on the first engine's worker."""
    control(url, reset=True, failing=True)
    print(f"(h') the same with 10 % 503 and 5 % 429, {LIMITED_RPM} calls a minute …", flush=True)
    with redis.Redis.from_url(args.redis) as counters:
        deferred_before = deferrals(counters).get("limited", 0)
        failing = chat_jobs(router, database_url, args.n, worker_pid, tier="limited")
        deferred = deferrals(counters).get("limited", 0) - deferred_before
    seen = control(url, failing=False)
    arrivals = seen.pop("completion_arrivals")
    failing.update(
        stand_in=seen,
        deferrals=deferred,
        calls=len(arrivals),
        limit_per_minute=LIMITED_RPM,
        most_calls_in_any_60_s=most_in_any_window(arrivals, 60.0),
    )
    results["chat_jobs_failing"] = failing
    print(f"(i) {args.inputs} embed inputs, one per job, as a bulk batch to TEI …", flush=True)
    results["tei_batch"] = embed_batch(router, url, args.inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--delay-ms", type=float, default=500.0)
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/1", help="emptied before use")
    parser.add_argument(
        "--engines",
        type=lambda text: text.split(","),
        default=["asyncio", "threads"],
        help="the remote pool's engines to measure, one worker after the other; (h') and (i) run on the first",
    )
    parser.add_argument("--processes", type=int, help="the asyncio engine's --processes (default: its own)")
    parser.add_argument("--concurrency", type=int, help="the worker's --concurrency (default: its own)")
    parser.add_argument("--one-by-one", type=int, default=200, help="(k)'s jobs, one at a time (0: no (k))")
    parser.add_argument(
        "--references-at-once", type=int, help="the references' calls at a time (default: the first engine's slots)"
    )
    parser.add_argument("--callers", type=int, default=200, help="(h'')'s AsyncRouter callers (0: no (h''))")
    args = parser.parse_args()

    behaviour = Behaviour(args.delay_ms / 1000.0, TEI_PER_CALL, TEI_CALL_S, TEI_AT_ONCE)
    at_once = args.references_at_once or slots(args.engines[0], args.processes, args.concurrency)
    stand_in, url = start_stand_in(behaviour)
    references = {}
    for name in CLIENTS:
        print(f"(reference) {args.n} calls from {name} …", flush=True)
        references[name] = measure(name, url, CHAT, args.n, at_once)
    reference = references["bare aiohttp"]
    print(f"(ceiling) {args.n} calls from bare asyncio connections …", flush=True)
    ceiling = asyncio.run(raw_client(url, args.n, at_once))
    redis.Redis.from_url(args.redis).flushdb()
    work = Path(tempfile.mkdtemp(prefix="llmr-remote-bench-"))
    config = work / "catalogue.toml"
    config.write_text(catalogue(url))
    results: dict[str, Any] = {
        "n": args.n,
        "delay_ms": args.delay_ms,
        "cores": os.cpu_count(),
        "references_at_once": at_once,
        "references": references,
        "ceiling": ceiling,
        "chat_jobs": {},
    }
    with bench_database(ADMIN, URL_TEMPLATE) as database_url:
        env = cluster_env(
            args.redis,
            database_url,
            work,
            LLM_ROUTER_CONFIG=str(config),
            LLM_ROUTER_RETRY_DELAY_SCALE="0.1",
            # Independent 15 % failures fail one job in ~2,000 after the default 3 retries (0.15**4): (h') asks
            # that all succeed, so it allows 6 (0.15**7, one in ~600,000).
            LLM_ROUTER_MAX_RETRIES="6",
        )
        settings = Settings(broker_url=args.redis, database_url=database_url, config=config)
        cluster = Cluster(env, work)
        try:
            with Router(settings) as router:
                for index, engine in enumerate(args.engines):
                    if index:
                        cluster.stop()  # one worker at a time on the machine
                    options = ("--processes", str(args.processes)) if engine == "asyncio" and args.processes else ()
                    options += ("--concurrency", str(args.concurrency)) if args.concurrency else ()
                    worker = cluster.start(f"remote-{engine}", "--pool", "remote", "--engine", engine, *options)
                    print(f"(h) {args.n} chat jobs through one remote worker, --engine {engine} …", flush=True)
                    results["chat_jobs"][engine] = chat_jobs(router, database_url, args.n, worker.pid)
                    print(f"    {results['chat_jobs'][engine]['per_s']:.1f} jobs/s", flush=True)
                    if index == 0 and args.callers:
                        print(f"(h'') {args.n} chat jobs from {args.callers} AsyncRouter callers …", flush=True)
                        results["async_callers"] = async_callers(settings, args.n, args.callers, worker.pid)
                    if index == 0 and args.one_by_one:
                        print(f"(k) {args.one_by_one} jobs one at a time, each waited for …", flush=True)
                        results["one_at_a_time"] = one_at_a_time(router, args.one_by_one, args.delay_ms)
                    if index == 0:
                        failing_and_bulk(router, url, database_url, worker.pid, args, results)
        finally:
            cluster.stop()
            stand_in.terminate()

    failing, tei = results["chat_jobs_failing"], results["tei_batch"]
    delay = args.delay_ms
    litellm = references["LiteLLM Router.acompletion"]
    against = {"aiohttp": reference, "LiteLLM": litellm, "ceiling": ceiling}
    for h in results["chat_jobs"].values():
        h["ratios"] = {name: h["per_s"] / other["per_s"] for name, other in against.items() if "per_s" in other}

    def row(label: str, measured: dict[str, Any], unit: str = "calls/s") -> tuple[str, str, str]:
        if "skipped" in measured:
            return label, "skipped", measured["skipped"]
        over = f"p50 {measured['p50_ms'] - delay:+.0f} ms, p95 {measured['p95_ms'] - delay:+.0f} ms over the delay"
        return label, f"{measured['per_s']:.1f} {unit}", f"CPU {measured['cpu_ms_per_call']:.1f} ms per call; {over}"

    def ratio_row(h: dict[str, Any]) -> tuple[str, str, str]:
        ratios = ", ".join(f"h/{name} {value:.2f}" for name, value in h["ratios"].items())
        return "", "", f"{ratios}; submit {h['submit_s']:.1f} s; peak RSS {h['worker_peak_rss_mb']:.0f} MB"

    def split_row(h: dict[str, Any]) -> tuple[str, str, str]:
        producer, worker = h["producer_cpu_ms_per_job"], h["worker_cpu_ms_per_job"]
        rest = h["cpu_ms_per_call"] - producer - worker
        return "", "", f"CPU ms a job: producer {producer:.2f}, worker {worker:.2f}, the rest {rest:.2f}"

    rows = [
        *(row(f"reference: {name}", measured) for name, measured in references.items()),
        ("ceiling: bare asyncio HTTP/1.1", f"{ceiling['per_s']:.0f} calls/s",
         f"CPU {ceiling['cpu_ms_per_call']:.1f} ms per call; {at_once} keep-alive connections"),
        *(line for engine, h in results["chat_jobs"].items()
          for line in (row(f"(h) chat jobs, --engine {engine}", h, "jobs/s"), ratio_row(h), split_row(h))),
        *((row(f"(h'') {callers['callers']} AsyncRouter callers", callers, "jobs/s"), split_row(callers))
          if (callers := results.get("async_callers")) else ()),
        ("(h') with 10 % 503, 5 % 429, a limit", f"{failing['per_s']:.1f} jobs/s",
         f"{failing['succeeded']}/{args.n} succeeded, {failing['usage_rows']} usage rows, "
         f"{failing['attempts']} attempts, {failing['deferrals']} deferrals; {failing['calls']} calls, at most "
         f"{failing['most_calls_in_any_60_s']} in any 60 s (limit {failing['limit_per_minute']})"),
        *((("(k) one job at a time, submit → wait()", f"{one['jobs']} jobs",
            f"p50 {one['p50_ms_over_delay']:+.1f} ms, p95 {one['p95_ms_over_delay']:+.1f} ms over the delay"),)
          if (one := results.get("one_at_a_time")) else ()),
        ("(i) TEI bulk embeds", f"{tei['inputs_per_s']:.0f} inputs/s",
         f"{tei['ratio_to_limit']:.2f} of the stand-in's {tei['stand_in_limit_per_s']:.0f}/s; "
         f"{tei['http_calls']} calls (floor {tei['calls_floor']}), largest {tei['largest_call']}"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"\n{os.cpu_count()} cores, stand-in delay {args.delay_ms:.0f} ms, {args.n} jobs")
    for label, figure, note in rows:
        print(f"{label:<{width}}  {figure:>16}  {note}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
