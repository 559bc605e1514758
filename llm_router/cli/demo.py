"""``llm-router demo``: the whole path on one machine, with embedded defaults unless told otherwise.

Prepares the bundled models, migrates the database, starts a worker pool, submits a small mixed sample
across the tiers, prints every result and the usage table, stops the worker, and exits 0 only when every
job succeeded and every answer is right.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import click

from llm_router.broker.client import Job, Router
from llm_router.broker.settings import Settings
from llm_router.cli.children import WORKER_READY, Child
from llm_router.cli.output import require_local, table
from llm_router.tasks.errors import JobError, JobTimeout
from llm_router.tasks.records import JobStatus
from llm_router.tasks.schemas import ClassifyResult, EmbedResult, GenerateResult

RELATED = ("A man is playing a guitar.", "Someone is strumming a guitar.")
UNRELATED = "The stock market crashed today."
SENTIMENT = (
    ("I love this, it works wonderfully!", "POSITIVE"),
    ("This is terrible, I want my money back.", "NEGATIVE"),
)


BULK_TOPICS = ["queues", "models", "workers", "databases"]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _wait(job: Job, worker: Child, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return job.wait(timeout=1.0)
        except JobTimeout:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise


def _cached(job: Job) -> str:
    return " · from the cache" if job.record().cached else ""


def _bulk(router: Router, worker: Child, timeout: float) -> bool:
    """A bulk batch: recorded in one transaction, carried many jobs per message in the bulk lane, and run
    through the model together on the worker."""
    sentences = [f"Sentence number {i} of a bulk batch about {topic}." for i, topic in enumerate(BULK_TOPICS * 50)]
    started = time.monotonic()
    # Never from the cache: the line measures the bulk lane, on every run of the demo.
    requests = [{"kind": "embed", "input": text, "tier": "fast", "use_cache": False} for text in sentences]
    submitted = router.batch(requests)
    deadline = started + timeout
    while (done := router.batch_progress(submitted.batch_id).get(JobStatus.SUCCEEDED, 0)) < len(sentences):
        if time.monotonic() > deadline or worker.process.poll() is not None:
            click.echo(f"[batch] only {done} of {len(sentences)} jobs done", err=True)
            return False
        time.sleep(0.1)
    seconds = time.monotonic() - started
    click.echo(
        f"[batch · fast.bulk] {len(sentences)} embed jobs, one per sentence: {seconds:.1f} s "
        f"({len(sentences) / seconds:.0f} jobs/s; each with its own record and usage row)\n"
    )
    return True


@click.command()
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait for all jobs.")
def demo(timeout: float) -> None:
    """Run a small mixed sample through the whole cluster path and print the results."""
    from llm_router.tasks.database import make_engine, upgrade
    from llm_router.workers.bundled.prepare import missing_models, prepare_models

    require_local("the demo")

    settings = Settings()
    click.echo(
        f"broker:   {settings.safe_broker_url()}"
        + (" (embedded, under ./var)" if settings.uses_embedded_broker else "")
    )
    click.echo(f"database: {settings.safe_database_url()}")
    click.echo(f"models:   {settings.models_dir}")
    if missing_models(settings.models_dir):
        click.echo("preparing the bundled models (once per machine, about a minute)…")
        prepare_models(settings.models_dir, say=click.echo)
    upgrade(make_engine(settings.resolved_database_url))

    router = Router(settings)
    log_path = settings.var_dir / "demo-worker.log"
    starting = time.monotonic()
    queues = ",".join(router.catalogue.ordered_tiers)
    hostname = f"demo-{os.getpid()}@%h"
    worker = Child.start(
        "the worker",
        ["worker", "--pool", "cpu", "--queues", queues, "--concurrency", "1", "--hostname", hostname],
        log_path,
    )
    click.echo(f"worker:   pid {worker.process.pid}, log {log_path}")
    ok = True
    try:
        # The jobs are submitted once the worker has loaded its models: their figures are theirs, not the load's.
        worker.wait_until(ready=WORKER_READY, timeout=timeout)
        click.echo(f"          ready in {time.monotonic() - starting:.1f} s, its models loaded (the jobs start now)\n")
        started = time.monotonic()
        story = router.generate("Once upon a time", tier="fast", max_tokens=40, seed=7)
        chat = router.generate(
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
            tier="balanced",
            temperature=0.0,
            max_tokens=30,
        )
        vectors = router.embed([*RELATED, UNRELATED], tier="fast")
        labels = router.classify([text for text, _ in SENTIMENT], tier="quality")

        result = _wait(story, worker, timeout)
        assert isinstance(result, GenerateResult)
        click.echo(
            f"[generate · {result.tier} · {result.model}{_cached(story)}] Once upon a time…\n  {result.text.strip()}\n"
        )

        result = _wait(chat, worker, timeout)
        assert isinstance(result, GenerateResult)
        click.echo(f"[chat · {result.tier} · {result.model}{_cached(chat)}] What is the capital of France?")
        click.echo(f"  {result.text.strip()}\n")
        ok &= "paris" in result.text.lower()

        embedded = _wait(vectors, worker, timeout)
        assert isinstance(embedded, EmbedResult)
        data = [item.embedding for item in embedded.data]
        related, unrelated = cosine(data[0], data[1]), cosine(data[0], data[2])
        click.echo(f"[embed · {embedded.tier} · {embedded.model}{_cached(vectors)}] {len(data[0])} dimensions")
        click.echo(f"  related   {RELATED[0]!r} ~ {RELATED[1]!r}: cosine {related:.3f}")
        click.echo(f"  unrelated {RELATED[0]!r} ~ {UNRELATED!r}: cosine {unrelated:.3f}")
        click.echo(f"  related pair scores higher: {'yes' if related > unrelated else 'NO'}\n")
        ok &= related > unrelated

        classified = _wait(labels, worker, timeout)
        assert isinstance(classified, ClassifyResult)
        click.echo(f"[classify · {classified.tier} · {classified.model}{_cached(labels)}]")
        for (text, expected), item in zip(SENTIMENT, classified.data, strict=True):
            best = item.labels[0]
            right = best.label == expected
            ok &= right
            click.echo(
                f"  {best.label:<8} {best.score:.3f}  {text!r}  {'right' if right else 'WRONG, expected ' + expected}"
            )
        hits = sum(job.record().cached for job in (story, chat, vectors, labels))
        from_cache = f" ({hits} of 4 answered from the cache: the same requests ran before)" if hits else ""
        click.echo(f"\nall jobs done in {time.monotonic() - started:.1f} s{from_cache}\n")
        ok &= _bulk(router, worker, timeout)
    except JobError as exc:
        ok = False
        click.echo(f"error: {exc}", err=True)
    finally:
        worker.stop()

    rows = [
        [
            u.tier,
            u.kind,
            u.model,
            u.requests,
            u.cache_hits,
            u.prompt_tokens,
            u.completion_tokens,
            u.total_tokens,
            u.avg_latency_ms,
        ]
        for u in router.store.usage_by_model()
    ]
    click.echo("usage (all jobs recorded in this database; avg ms: from submission to the answer, per job)")
    click.echo(table(["tier", "kind", "model", "requests", "cached", "prompt", "completion", "total", "avg ms"], rows))
    if not ok:
        raise click.ClickException("the demo did not get the expected answers")
