"""``llm-router prune``: remove old final jobs, or only their requests and results (usage is kept)."""

from __future__ import annotations

import click

from llm_router.cli.output import EXIT_INVALID, emit_json, fail
from llm_router.cli.usage import parse_since


@click.command()
@click.option("--older-than", required=True, help="Jobs created before: 30d, 12h or an ISO date.")
@click.option("--results-only", is_flag=True, help="Keep the jobs, attempts and usage; clear requests and results.")
@click.option("--dry-run", is_flag=True, help="Count them; change nothing.")
@click.option("--json", "as_json", is_flag=True)
def prune(older_than: str, results_only: bool, dry_run: bool, as_json: bool) -> None:
    """Prune jobs created before --older-than that ended (succeeded, failed, rejected). A job still queued,
    waiting or running is never touched."""
    from llm_router.broker.client import Router

    try:
        cutoff = parse_since(older_than)
    except click.BadParameter as exc:
        fail(f"--older-than: {exc.message}", code=EXIT_INVALID, as_json=as_json)
    with Router() as router:
        outcome = router.store.prune(cutoff, results_only=results_only, dry_run=dry_run)
    if as_json:
        emit_json({**outcome.__dict__, "older_than": cutoff.isoformat()})
        return
    verb = "would prune" if dry_run else "pruned"
    what = "the requests and results of " if results_only else ""
    click.echo(f"{verb} {what}{outcome.jobs:,} job(s) created before {cutoff:%Y-%m-%d %H:%M} UTC")
