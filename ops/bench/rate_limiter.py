"""Benchmark the cluster-wide rate limiter on a real Redis: overhead per job and achieved rate.

    python ops/bench/rate_limiter.py [--redis redis://127.0.0.1:6379/15] [--limit 50] [--window 1]
                                     [--duration 10] [--processes 2] [--json OUT.json]

(a) overhead: the time one ``acquire`` of a tier's minute and hour windows costs, with room to spare;
(b) achieved rate: ``--processes`` processes (workers) take slots of one window of ``--limit`` per
``--window`` seconds for ``--duration`` seconds, deferring exactly as workers do (sleep the wait the
limiter names); the figure is granted / (limit x duration / window), and ``excess`` is how far the
busiest window went over the limit (0 is the target). Production windows are 60 s and 3,600 s; a 1 s
window measures the same script and Redis round trips in a short run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import redis
from limits import RateLimitItemPerSecond

from llm_router.workers.rate_limits import NAMESPACE, RateLimiter, Rule, window_rules


def overhead(url: str, samples: int) -> dict[str, float]:
    limiter = RateLimiter(url)
    rules = window_rules(("tier", "bench-overhead"), per_minute=10**9, per_hour=10**9)
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        assert limiter.acquire(rules) == 0.0
        timings.append((time.perf_counter() - started) * 1e6)
    limiter.clear(rules)
    timings.sort()
    return {
        "samples": samples,
        "mean_us": statistics.fmean(timings),
        "p50_us": timings[len(timings) // 2],
        "p99_us": timings[int(len(timings) * 0.99) - 1],
    }


def _taker(url: str, limit: int, window: int, stop_at: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    limiter = RateLimiter(url)
    rule = Rule(RateLimitItemPerSecond(limit, window), (NAMESPACE, "bench", "achieved"))
    granted = []
    while (now := time.time()) < stop_at:
        wait = limiter.acquire([rule])
        if wait == 0.0:
            granted.append(now)
        else:
            time.sleep(min(wait, max(0.0, stop_at - time.time())))
    out.put(granted)


def achieved(url: str, limit: int, window: int, duration: float, processes: int) -> dict[str, float]:
    rule = Rule(RateLimitItemPerSecond(limit, window), (NAMESPACE, "bench", "achieved"))
    RateLimiter(url).clear([rule])
    stop_at = time.time() + duration
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    workers = [
        multiprocessing.Process(target=_taker, args=(url, limit, window, stop_at, queue)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    times = sorted(t for _ in workers for t in queue.get(timeout=duration + 30))
    for worker in workers:
        worker.join()
    busiest = max((sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times)), default=0)
    allowed = limit * duration / window
    return {
        "granted": len(times),
        "allowed": allowed,
        "achieved_fraction": len(times) / allowed,
        "busiest_window": busiest,
        "excess": max(0, busiest - limit),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--window", type=int, default=1, help="seconds")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    redis.Redis.from_url(args.redis).ping()

    cost = overhead(args.redis, args.samples)
    rate = achieved(args.redis, args.limit, args.window, args.duration, args.processes)
    print(f"{'measure':<34}{'value':>12}")
    print("-" * 46)
    print(f"{'acquire overhead, mean (µs)':<34}{cost['mean_us']:>12.0f}")
    print(f"{'acquire overhead, p50 (µs)':<34}{cost['p50_us']:>12.0f}")
    print(f"{'acquire overhead, p99 (µs)':<34}{cost['p99_us']:>12.0f}")
    print(f"{'limit (per window)':<34}{args.limit:>12}")
    print(f"{'window (s) x duration (s)':<34}{f'{args.window} x {args.duration:g}':>12}")
    print(f"{'processes':<34}{args.processes:>12}")
    granted = f"{rate['granted']} / {rate['allowed']:g}"
    print(f"{'granted / allowed':<34}{granted:>12}")
    print(f"{'achieved fraction of the limit':<34}{rate['achieved_fraction']:>12.3f}")
    print(f"{'busiest window (calls)':<34}{rate['busiest_window']:>12}")
    print(f"{'excess over the limit':<34}{rate['excess']:>12}")
    if args.json:
        report = {"arguments": vars(args) | {"json": str(args.json)}, "overhead": cost, "rate": rate}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
