"""``llm-router usage``: requests, cache hits, tokens, failures, latency and fallbacks, from the database."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

from llm_router.cli.output import EXIT_INVALID, emit_json, fail, table

_RELATIVE = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``7d`` back from now, or an ISO date/time (UTC when no zone is given)."""
    match = _RELATIVE.match(value.strip())
    if match:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("expected e.g. 30m, 2h, 7d or an ISO date such as 2026-01-31T12:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.command()
@click.option("--since", help="Only jobs created since: 30m, 2h, 7d or an ISO date.")
@click.option("--json", "as_json", is_flag=True)
def usage(since: str | None, as_json: bool) -> None:
    """Usage of the whole cluster: requests, cache hit rate, tokens, failures, latency, fallbacks."""
    from llm_router.broker.client import Router

    try:
        start = parse_since(since) if since else None
    except click.BadParameter as exc:
        fail(f"--since: {exc.message}", code=EXIT_INVALID, as_json=as_json)
    with Router() as router:
        report = router.store.usage_report(start)
    if as_json:
        emit_json(report)
        return
    click.echo(
        f"jobs {report.jobs:,} ({', '.join(f'{k} {v:,}' for k, v in sorted(report.by_status.items())) or 'none'})"
    )
    click.echo(
        f"answered {report.requests + report.cache_hits:,}: model {report.requests:,}, cache {report.cache_hits:,} "
        f"(hit rate {report.cache_hit_rate:.1f} %)"
    )
    click.echo(
        f"tokens {report.total_tokens:,} (prompt {report.prompt_tokens:,}, completion {report.completion_tokens:,})"
    )
    click.echo(
        f"retries {report.retries:,}, model fallbacks {report.model_fallbacks:,}, "
        f"tier fallbacks {report.tier_fallbacks:,}"
    )
    if report.failures_by_cause:
        click.echo("failures: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report.failures_by_cause.items())))
    rows = [
        [m.tier, m.kind, m.model, m.requests, m.cache_hits, m.total_tokens, m.p50_ms, m.p95_ms] for m in report.models
    ]
    click.echo("\n" + table(["tier", "kind", "model", "requests", "cached", "tokens", "p50 ms", "p95 ms"], rows))
