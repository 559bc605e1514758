"""The chaos run: mixed jobs from several producers while workers are killed whole, Redis restarts and
PostgreSQL restarts, then the books are checked.

    python ops/bench/chaos.py --json OUT.json [--jobs 20000] [--producers 4] [--kill-every 30]
                              [--redis-at 60] [--postgres-at 150]

Uses the machine's real Redis (broker and shared state, one database emptied first) and a fresh PostgreSQL
database it drops after; every call goes to a stand-in API on 127.0.0.1 (ops/bench/stand_in.py) that answers
chat after 500 ms and embeddings as TEI does, with 10 % 503 and 5 % 429.

Jobs (every text distinct, so no cache answers): 50 % chat and 15 % embeddings on a remote tier, 20 % embed,
14 % classify and 1 % short generations on a local tier (the bundled models; generation on two shared cores
is the slowest part by far). Each producer submits a fifth of
its share as bulk batches, the rest one by one, every submission with an idempotency key, and submits again
with the same key when a submission fails, as a web backend retries a request.

Workers: two cpu workers and one remote worker, at their defaults (the sweeper at its defaults too). Every
``--kill-every`` seconds one of them, in turn, is SIGKILLed whole and a new one started in its place, as a
supervisor does; Redis is restarted once (every message and key lost) and PostgreSQL once, stopped for 2 s.

Checked at the end: every job final, one usage row per succeeded job, no job with two succeeded attempts, and
for each fault the time until the work it interrupted ran again.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llm_router.tasks.records import FINAL_STATUSES  # noqa: E402
from ops.bench.cluster import Cluster, cluster_env  # noqa: E402
from ops.bench.database import bench_database  # noqa: E402
from ops.bench.faults import kill_whole, restart_postgres, restart_redis  # noqa: E402
from ops.bench.remote import api_tier  # noqa: E402
from ops.bench.report import percentile  # noqa: E402
from ops.bench.stand_in import Behaviour  # noqa: E402
from ops.bench.stand_in import start as start_stand_in  # noqa: E402

BROKER = "redis://127.0.0.1:6379/13"
MINILM, SENTIMENT = "sentence-transformers/all-MiniLM-L6-v2", "llm-runner-router/minilm-sentiment"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHUNK = 50  # a producer's jobs go out in chunks: one in five as a bulk batch, the others one by one
SUBMIT_PATIENCE_S = 300.0


def catalogue(url: str) -> str:
    return f"""
default_tier = "local"
tier_order = ["local", "api"]
[tiers.local]
pool = "cpu"
generate = ["{SMOL}"]
embed = ["{MINILM}"]
classify = ["{SENTIMENT}"]
{api_tier(url)}[models."{SMOL}"]
dtype = "bfloat16"
"""


def request_for(producer: int, n: int) -> dict[str, Any]:
    """The n-th job of a producer: the mix of the module's docstring, in a fixed pattern of 100."""
    words, slot = f"chaos {producer}-{n} about queues that lose nothing", n % 100
    if slot < 50:
        return {"kind": "generate", "prompt": words, "tier": "api", "max_tokens": 8}
    if slot < 65:
        return {"kind": "embed", "input": words, "tier": "api"}
    if slot < 85:
        return {"kind": "embed", "input": words, "tier": "local"}
    if slot < 99:
        return {"kind": "classify", "input": words, "tier": "local"}
    return {"kind": "generate", "prompt": words, "tier": "local", "max_tokens": 4, "temperature": 0}


def _patiently(submit: Any, failures: list[str]) -> Any:
    """Submit until it is taken: a failed submission is sent again with the same idempotency key."""
    deadline = time.monotonic() + SUBMIT_PATIENCE_S
    while True:
        try:
            return submit()
        except Exception as exc:  # the broker or the database is down: retry, as a web backend would
            from llm_router.tasks.errors import InvalidRequest

            if isinstance(exc, InvalidRequest) or time.monotonic() > deadline:
                raise
            failures.append(f"{type(exc).__name__}: {exc}"[:200])
            time.sleep(0.5)


def produce(env: dict[str, str], producer: int, count: int, run: str) -> dict[str, Any]:
    os.environ.update(env)
    from llm_router.broker.client import Router

    ids: list[str] = []
    failures: list[str] = []
    with Router() as router:
        for chunk, start in enumerate(range(0, count, CHUNK)):
            numbers = range(start, min(start + CHUNK, count))
            if chunk % 5 == 4:
                key = f"{run}-{producer}-batch-{chunk}"
                requests = [request_for(producer, n) for n in numbers]
                batch = _patiently(lambda r=requests, k=key: router.batch(r, idempotency_key=k), failures)
                assert not batch.errors, batch.errors
                ids += [batch.jobs[i].id for i in range(len(requests))]
                continue
            for n in numbers:
                request = {**request_for(producer, n), "idempotency_key": f"{run}-{producer}-{n}"}
                ids.append(_patiently(lambda request=request: router.submit(request), failures).id)
    return {"ids": ids, "failed_submissions": failures}


class Faults:
    """Workers killed in turn every ``kill_every`` s (each replaced at once), Redis and PostgreSQL restarted
    once each; every fault is timed."""

    def __init__(self, cluster: Cluster, kill_every: float, redis_at: float, postgres_at: float):
        self.cluster, self.kill_every = cluster, kill_every
        self.redis_at, self.postgres_at = redis_at, postgres_at
        self.workers: dict[str, Any] = {}
        self.generation: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def start_worker(self, role: str) -> None:
        self.generation[role] = self.generation.get(role, 0) + 1
        name = f"{role}-{self.generation[role]}"
        arguments = ("--pool", "remote") if role == "remote" else ("--pool", "cpu")
        self.workers[role] = (name, self.cluster.start(name, *arguments))

    def run(self, started: float) -> None:
        roles = ["cpu-a", "remote", "cpu-b"]
        faults = sorted(
            [(self.redis_at, "redis"), (self.postgres_at, "postgres")]
            + [(self.kill_every * k, "kill") for k in range(1, 10_000)]
        )
        kills = 0
        for at, fault in faults:
            while time.monotonic() - started < at:
                if self.stop.wait(0.2):
                    return
            event: dict[str, Any] = {"fault": fault, "at": datetime.now(UTC), "at_s": time.monotonic() - started}
            if fault == "kill":
                role = roles[kills % len(roles)]
                kills += 1
                name, process = self.workers[role]
                kill_whole(process)
                event["worker"] = name
                self.start_worker(role)  # a supervisor's restart; its replacement loads its models first
            elif fault == "redis":
                restart_redis()
            else:
                restart_postgres()
            event["took_s"] = time.monotonic() - started - event["at_s"]
            self.events.append(event)
            print(f"{event['at_s']:7.1f} s  {fault} {event.get('worker', '')}", flush=True)


def progress(engine: Any) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
    return {status: int(n) for status, n in rows}


def books(engine: Any) -> dict[str, Any]:
    """What the database says once every job is final."""
    with engine.connect() as connection:
        one = connection.execute(
            text(
                "SELECT (SELECT count(*) FROM jobs),"
                " (SELECT count(*) FROM jobs WHERE status = 'succeeded'),"
                " (SELECT count(*) FROM usage),"
                " (SELECT count(*) FROM jobs j WHERE j.status = 'succeeded'"
                "   AND (SELECT count(*) FROM usage u WHERE u.job_id = j.id) <> 1),"
                " (SELECT count(*) FROM (SELECT job_id FROM attempts WHERE status = 'succeeded'"
                "   GROUP BY job_id HAVING count(*) > 1) twice),"
                " (SELECT count(*) FROM attempts),"
                " (SELECT count(*) FROM attempts WHERE status = 'lost'),"
                " (SELECT count(DISTINCT job_id) FROM attempts WHERE status = 'lost')"
            )
        ).one()
    keys = ["jobs", "succeeded", "usage_rows", "succeeded_without_one_usage_row", "jobs_succeeded_twice"]
    keys += ["attempts", "lost_attempts", "jobs_with_a_lost_attempt"]
    return dict(zip(keys, (int(v) for v in one), strict=True))


def recovery(engine: Any, event: dict[str, Any]) -> dict[str, Any]:
    """For a kill: the killed worker's open attempts, and how long until each of their jobs ran again. For a
    restart: how long until a job that started after it ended."""
    at = event["at"]
    with engine.connect() as connection:
        if event["fault"] == "kill":
            # Recovered: the dead run's attempt closed as lost (by the sweeper, or by a worker taking the job
            # over); ran again: the job's next attempt started, after any queue ahead of it.
            rows = connection.execute(
                text(
                    "SELECT extract(epoch FROM a.finished_at - :at) AS recovered,"
                    " extract(epoch FROM (SELECT min(b.started_at) FROM attempts b"
                    "  WHERE b.job_id = a.job_id AND b.started_at > :at) - :at) AS ran_again"
                    " FROM attempts a WHERE a.worker = :worker AND a.started_at <= :at"
                    " AND (a.finished_at IS NULL OR a.finished_at > :at)"
                ),
                {"at": at.replace(tzinfo=None), "worker": f"{event['worker']}@bench"},
            ).all()
            recovered = [float(row.recovered) for row in rows if row.recovered is not None]
            ran_again = [float(row.ran_again) for row in rows if row.ran_again is not None]
            return {
                "jobs_cut": len(rows),
                "recovered": len(recovered),
                "recovered_p50_s": percentile(recovered, 50) if recovered else None,
                "recovered_max_s": max(recovered) if recovered else None,
                "ran_again": len(ran_again),
                "ran_again_p50_s": percentile(ran_again, 50) if ran_again else None,
                "ran_again_max_s": max(ran_again) if ran_again else None,
            }
        first = connection.execute(
            text(
                "SELECT extract(epoch FROM min(j.finished_at) - :at) FROM jobs j"
                " JOIN attempts a ON a.job_id = j.id AND a.status = 'succeeded' WHERE a.started_at > :at"
            ),
            {"at": at.replace(tzinfo=None)},
        ).scalar_one()
    return {"first_job_ended_after_s": None if first is None else float(first)}


def _in_logs(work: Path, words: str) -> int:
    return sum(log.read_text(errors="replace").count(words) for log in work.glob("*.log"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=30.0)
    parser.add_argument("--redis-at", type=float, default=60.0)
    parser.add_argument("--postgres-at", type=float, default=150.0)
    parser.add_argument("--deadline-s", type=float, default=3600.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    redis.Redis.from_url(BROKER).flushdb()
    stand_in, url = start_stand_in(Behaviour(delay_s=0.5))
    import httpx

    httpx.post(f"{url}/control", json={"failing": True}, timeout=10).raise_for_status()
    work = Path(tempfile.mkdtemp(prefix="llmr-chaos-"))
    config = work / "catalogue.toml"
    config.write_text(catalogue(url))
    run = f"chaos-{int(time.time())}"
    with bench_database() as database_url:
        env = cluster_env(
            BROKER,
            database_url,
            work,
            LLM_ROUTER_CONFIG=str(config),
            LLM_ROUTER_RETRY_DELAY_SCALE="0.1",
            LLM_ROUTER_MAX_RETRIES="6",
            LLM_ROUTER_COOLDOWN_S="0",
            HF_HUB_OFFLINE="1",
        )
        cluster = Cluster(env, work)
        faults = Faults(cluster, args.kill_every, args.redis_at, args.postgres_at)
        engine = create_engine(database_url, pool_pre_ping=True)
        try:
            for role in ("cpu-a", "cpu-b", "remote"):
                faults.start_worker(role)
            started = time.monotonic()
            share = args.jobs // args.producers
            context = multiprocessing.get_context("spawn")
            with context.Pool(args.producers) as pool:
                pending = pool.starmap_async(produce, [(env, p, share, run) for p in range(args.producers)])
                driver = threading.Thread(target=faults.run, args=(started,), daemon=True)
                driver.start()
                produced = pending.get(timeout=args.deadline_s)
            submitted_s = time.monotonic() - started
            total = share * args.producers
            while time.monotonic() - started < args.deadline_s:
                try:
                    counts = progress(engine)
                except Exception as exc:  # PostgreSQL may be restarting just now
                    print(f"progress unreadable: {type(exc).__name__}", flush=True)
                    time.sleep(2)
                    continue
                final = sum(n for status, n in counts.items() if status in FINAL_STATUSES)
                print(f"{time.monotonic() - started:7.1f} s  {final}/{total} final  {counts}", flush=True)
                if final >= total:
                    break
                time.sleep(5)
            ended_s = time.monotonic() - started
            faults.stop.set()
            driver.join(timeout=120)
            report = {
                "jobs": total,
                "producers": args.producers,
                "submitted_s": submitted_s,
                "all_final_s": ended_s,
                "jobs_per_s": total / ended_s,
                "statuses": progress(engine),
                "failed_submissions_retried": sum(len(p["failed_submissions"]) for p in produced),
                "failed_submission_samples": sorted({f for p in produced for f in p["failed_submissions"]})[:10],
                "distinct_job_ids": len({i for p in produced for i in p["ids"]}),
                **books(engine),
                "faults": [{**{k: v for k, v in e.items() if k != "at"}, **recovery(engine, e)} for e in faults.events],
                "redeliveries_ignored": _in_logs(work, "redelivery ignored"),
                "recovered_from_held_messages": _in_logs(work, "died before starting it"),
                "recovered_from_lapsed_leases": _in_logs(work, "stopped renewing its lease"),
                "recovered_from_vanished_messages": _in_logs(work, "on no queue and held by no worker"),
            }
        finally:
            faults.stop.set()
            cluster.stop()
            engine.dispose()
            stand_in.terminate()
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
