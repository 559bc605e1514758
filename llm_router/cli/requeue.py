"""``llm-router requeue --stale``: publish again the jobs a broker lost or a dead worker left behind."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from llm_router.cli.output import EXIT_INVALID, emit_json, fail
from llm_router.cli.usage import parse_since

if TYPE_CHECKING:
    from llm_router.tasks.store import JobView


@click.command()
@click.option("--stale", is_flag=True, required=True, help="Requeue jobs not final and idle for --older-than.")
@click.option("--older-than", default="10m", show_default=True, help="Idle time: 30s, 10m, 2h.")
@click.option("--dry-run", is_flag=True, help="List them without publishing.")
@click.option("--json", "as_json", is_flag=True)
def requeue(stale: bool, older_than: str, dry_run: bool, as_json: bool) -> None:
    """Recover jobs from the database, the source of truth: queued, retrying or running jobs with no sign
    of life for a while are published again (a job that finished meanwhile is never run twice)."""
    from datetime import UTC, datetime

    from llm_router.broker.client import Router

    try:
        now = datetime.now(UTC)
        seconds = (now - parse_since(older_than, now)).total_seconds()
    except click.BadParameter as exc:
        fail(f"--older-than: {exc.message}", code=EXIT_INVALID, as_json=as_json)
    with Router() as router:
        outcome = router.requeue_stale(seconds, dry_run=dry_run)
    rows = [_row(job) for job in outcome.requeued]
    left = [_row(job) for job in outcome.unroutable]
    if as_json:
        emit_json({"requeued": 0 if dry_run else len(rows), "jobs": rows, "unroutable": left})
        return
    for row in rows:
        click.echo(f"{row['id']} {row['status']} → {row['queue']}")
    for row in left:
        click.echo(f"{row['id']} {row['status']} left: queue {row['queue']!r} is not in the catalogue")
    click.echo(f"{'would requeue' if dry_run else 'requeued'} {len(rows)} job(s)")
    if left:
        click.echo(f"left {len(left)} job(s) on queues no tier of the catalogue serves", err=True)


def _row(job: JobView) -> dict[str, str | None]:
    return {"id": job.id, "kind": job.kind, "status": job.status, "queue": job.queue or job.tier}
