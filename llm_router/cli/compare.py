"""``llm-router compare``: one prompt on several models at once, the guide's comparison table and summary."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from llm_router.broker.client import Router
from llm_router.broker.compare import Comparison
from llm_router.cli.output import EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT, emit_json, fail, table
from llm_router.cli.submit import json_option
from llm_router.tasks.errors import ConfigurationError, InvalidRequest


def clip(text: str | None, width: int = 60) -> str | None:
    if text is None:
        return None
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def show_comparison(comparison: Comparison) -> str:
    rows = [
        [
            row.model,
            row.status,
            row.latency_ms,
            row.queue_ms,
            row.model_ms,
            row.tokens,
            clip(row.text if row.success else row.error),
        ]
        for row in comparison.rows
    ]
    headers = ["model", "status", "latency ms", "queue ms", "model ms", "tokens", "answer / error"]
    summary = comparison.summary
    lines = [
        table(headers, rows),
        "",
        f"run {comparison.run_id}: {summary.successful} successful, {summary.failed} failed"
        + (f", {summary.late} late" if summary.late else ""),
        f"average latency {summary.avg_latency_ms if summary.avg_latency_ms is not None else '-'} ms, "
        f"average tokens {summary.avg_tokens if summary.avg_tokens is not None else '-'}",
        f"fastest: {summary.fastest or '-'}; longest response: {summary.longest_response or '-'}",
    ]
    return "\n".join(lines)


@click.command()
@click.option("--models", required=True, help="Comma-separated model ids of the catalogue (1 to 32).")
@click.option("--prompt", help="The prompt (generate), or the input text (embed, classify).")
@click.option("--messages", help='Chat messages as JSON: [{"role": "user", "content": "…"}].')
@click.option("--kind", type=click.Choice(["generate", "embed", "classify"]), default="generate", show_default=True)
@click.option("--max-tokens", type=int)
@click.option("--temperature", type=float)
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for every model.")
@click.option("--json", "as_json", is_flag=True)
def compare(
    models: str,
    prompt: str | None,
    messages: str | None,
    kind: Any,
    max_tokens: int | None,
    temperature: float | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Run one prompt on several models at once: latency (queue and model time apart), tokens and answer
    per model, and the guide's summary. Exit 1 when a model failed, 4 when one was still running."""
    try:
        chat = json_option("--messages", messages) if messages is not None else None
        with Router() as router:
            comparison = router.compare(
                models,
                prompt,
                messages=chat,
                kind=kind,
                timeout=timeout,
                max_tokens=max_tokens,
                temperature=temperature,
            )
    except (InvalidRequest, ConfigurationError) as exc:
        fail(str(exc), code=EXIT_INVALID, as_json=as_json)
    if as_json:
        emit_json(
            {
                "run_id": comparison.run_id,
                "kind": comparison.kind,
                "summary": asdict(comparison.summary),
                "rows": comparison.rows,
                "timed_out": comparison.timed_out,
            }
        )
    else:
        click.echo(show_comparison(comparison))
    if comparison.timed_out:
        raise SystemExit(EXIT_TIMEOUT)
    if comparison.summary.failed:
        raise SystemExit(EXIT_FAILED)
