"""``llm-router pipeline`` (the guide's processText, or a pipeline of the catalogue) and ``llm-router runs``."""

from __future__ import annotations

from typing import Any

import click

from llm_router.broker.client import Router
from llm_router.cli.compare import clip
from llm_router.cli.output import EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT, emit_json, fail, table
from llm_router.tasks.errors import ConfigurationError, InvalidRequest
from llm_router.tasks.records import RunStatus


@click.command()
@click.argument("text")
@click.option("--name", default="reply", show_default=True, help="Which pipeline of the catalogue.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for the last step.")
@click.option("--json", "as_json", is_flag=True)
def pipeline(text: str, name: str, timeout: float, as_json: bool) -> None:
    """Run a pipeline on TEXT: by default the guide's processText — classify, reply in the tone the sentiment
    calls for, embed the reply — each step a job that the workers chain. Exit 1 when a step failed, 4 when the
    wait ran out (the pipeline goes on)."""
    try:
        with Router() as router:
            result = router.pipeline(text, name=name, timeout=timeout)
    except (InvalidRequest, ConfigurationError) as exc:
        fail(str(exc), code=EXIT_INVALID, as_json=as_json)
    if as_json:
        emit_json(result)
    else:
        rows = [
            [s.name, s.kind, s.status, s.latency_ms, clip(s.answer if s.error is None else s.error)]
            for s in result.steps
        ]
        click.echo(table(["step", "kind", "status", "latency ms", "answer / error"], rows))
        click.echo(f"\npipeline {result.name} run {result.run_id}: {result.status}")
        if result.sentiment is not None:
            click.echo(f"sentiment: {result.sentiment} (tone: {result.tone})")
        if result.response is not None:
            click.echo(f"response: {result.response.strip()}")
        if result.embedding is not None:
            click.echo(f"embedding: {len(result.embedding)} dimensions")
        if result.error:
            click.echo(f"error: {result.error}")
    if result.status == RunStatus.RUNNING:
        raise SystemExit(EXIT_TIMEOUT)
    if result.status != RunStatus.SUCCEEDED:
        raise SystemExit(EXIT_FAILED)


def _figures(kind: str, summary: dict[str, Any] | None) -> str:
    """A run's figures in a line."""
    if not summary:
        return "-"
    if kind == "compare":
        s = summary.get("summary", {})
        return f"{s.get('successful')} ok, {s.get('failed')} failed; fastest {s.get('fastest') or '-'}"
    if kind == "evaluate":
        return "; ".join(f"{r['model']} {r['passed']}/{r['total']}" for r in summary.get("reports", []))
    steps = summary.get("steps", [])
    return ", ".join(f"{s['name']} {s['status']}" for s in steps)


@click.command()
@click.option("--kind", type=click.Choice(["compare", "evaluate", "pipeline"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def runs(kind: str | None, limit: int, as_json: bool) -> None:
    """Comparisons, evaluations and pipelines, newest first: which models, when, and what came of them."""
    with Router() as router:
        found = router.store.runs(kind, limit)
    if as_json:
        emit_json(found)
        return
    rows = [
        [
            run.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            run.kind,
            run.name,
            run.status,
            ", ".join(run.models or []),
            _figures(run.kind, run.summary),
            run.id,
        ]
        for run in found
    ]
    click.echo(table(["created", "kind", "name", "status", "models", "figures", "run"], rows))
