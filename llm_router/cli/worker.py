"""``llm-router worker``: start a worker of the cpu or gpu pool on the configured broker."""

from __future__ import annotations

import os
import socket

import click

from llm_router.cli.output import EXIT_INVALID, fail, require_local
from llm_router.tasks.errors import ConfigurationError

MAX_PROCESSES = 64


@click.command()
@click.option("--pool", type=click.Choice(["cpu", "gpu", "remote"]), default="cpu", show_default=True)
@click.option("--queues", help="Comma-separated tier queues (default: the tiers that name this pool).")
@click.option("--concurrency", "-c", type=int, help="Worker processes (cpu pool; default 1).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Override the pool's device.")
@click.option(
    "--quantize",
    type=click.Choice(["none", "8bit"]),
    default="none",
    show_default=True,
    help="8-bit dynamic quantisation of Linear layers (cpu).",
)
@click.option("--max-memory", help="Cap on loaded model weights (e.g. 8GB); least recently used models unload.")
@click.option(
    "--lanes",
    type=click.Choice(["both", "interactive", "bulk"]),
    default="both",
    show_default=True,
    help="Which lanes of the tiers to serve; with both, interactive jobs are always taken first.",
)
@click.option(
    "--max-batch",
    type=int,
    help="Most inputs run through a model in one call [default: 64; remote pool: 32, one HTTP call to TEI or the "
    "Inference API].",
)
@click.option(
    "--max-wait-ms",
    type=float,
    default=0.0,
    show_default=True,
    help="How long a short embed/classify batch waits for more jobs (0: only those already waiting).",
)
@click.option(
    "--bulk-window",
    type=int,
    help="Inputs a bulk embed/classify call takes together, sorted by token count into passes of --max-batch "
    "(waiting interactive jobs run between two passes) [default: 1024].",
)
@click.option(
    "--torch-threads",
    type=int,
    help="Threads per process for torch (cpu pool; default LLM_ROUTER_TORCH_THREADS, else cores / processes).",
)
@click.option("--nice", "niceness", type=int, help="CPU niceness of the worker (default 10 for --lanes bulk, else 0).")
@click.option(
    "--engine",
    type=click.Choice(["asyncio", "threads"]),
    help="Remote pool: jobs as coroutines on an event loop per process, or Celery's threads pool [default: asyncio].",
)
@click.option(
    "--processes",
    type=int,
    help="Remote pool (asyncio): event-loop processes, each with --concurrency calls in flight [default: cores].",
)
@click.option("--hostname", "-n", help="Celery node name (default: POOL-PID@host).")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def worker(
    pool: str,
    queues: str | None,
    concurrency: int | None,
    device: str | None,
    quantize: str,
    max_memory: str | None,
    lanes: str,
    max_batch: int | None,
    max_wait_ms: float,
    bulk_window: int | None,
    niceness: int | None,
    torch_threads: int | None,
    engine: str | None,
    processes: int | None,
    hostname: str | None,
    loglevel: str,
) -> None:
    """Consume jobs of the pool's tier queues and run their models."""
    from llm_router.broker.celery_app import create_app
    from llm_router.broker.settings import Settings
    from llm_router.tasks.database import check_schema, make_engine, upgrade
    from llm_router.workers.log_limits import quiet_outages
    from llm_router.workers.pools import parse_size, plan_pool

    settings = Settings()
    app = create_app(settings)
    try:
        plan = plan_pool(
            pool,  # type: ignore[arg-type]
            app.catalogue,
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
            concurrency=concurrency,
            device=device,  # type: ignore[arg-type]
            quantize=quantize,  # type: ignore[arg-type]
            max_memory_bytes=parse_size(max_memory) if max_memory else None,
            lanes=lanes,  # type: ignore[arg-type]
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            bulk_window=bulk_window,
            niceness=niceness,
            torch_threads=torch_threads or settings.torch_threads,
        )
    except ConfigurationError as exc:
        fail(str(exc), code=EXIT_INVALID)
    if engine is not None and pool != "remote":
        fail(f"--engine {engine}: only the remote pool has a choice of engine", code=EXIT_INVALID)
    engine = engine or ("asyncio" if pool == "remote" else "threads")
    if processes is not None and (engine != "asyncio" or not 1 <= processes <= MAX_PROCESSES):
        fail(f"--processes: 1 to {MAX_PROCESSES} event-loop processes, with --engine asyncio", code=EXIT_INVALID)
    if plan.profile.runs_models:
        require_local(f"the {pool} pool")
    database = make_engine(settings.resolved_database_url)
    try:
        if database.dialect.name == "sqlite":
            upgrade(database)  # embedded mode: nobody else runs migrations
        else:
            check_schema(database)  # a worker never starts on a database it cannot write
    finally:
        database.dispose()
    if plan.profile.niceness:
        os.nice(plan.profile.niceness)  # before the pool forks, so every process inherits it
    app.worker_profile = plan.profile  # type: ignore[attr-defined]
    quiet_outages()  # a broker that is away is said once a minute, not at every try
    node = hostname or f"{pool}-{os.getpid()}@%h"
    if engine == "asyncio":
        from llm_router.workers.async_pool.processes import serve

        serve(app, plan, node.replace("%h", socket.gethostname()), processes or os.cpu_count() or 1, loglevel)
        return
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(plan.queues),
            "--pool",
            plan.execution_pool,
            "--concurrency",
            str(plan.concurrency),
            "--hostname",
            node,
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )
