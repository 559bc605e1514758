"""``llm-router batch IN.jsonl -o OUT.jsonl``: one job per line, progress while they run, one result line
per input line in input order, and a re-run after an interruption that submits nothing twice.

Each job's id is derived from the batch id and the line's id, and the batch id from the input and output
paths (or ``--batch-id``): running the same command again finds the jobs already recorded instead of
creating new ones, and waits for them.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

import click

from broker.cli.output import EXIT_INVALID, fail

NAMESPACE = uuid.UUID("6f1c2a52-0d4e-4c35-9a7e-3b8e5d2f9c41")
FINAL = {"succeeded", "failed", "rejected"}


def read_lines(
    source: TextIO, defaults: dict[str, Any]
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, str], list[str]]:
    """(line id, request) pairs; errors by key for lines that are not a JSON object; every key in file order
    (a line's id, or its line number for a line that could not be read)."""
    requests: list[tuple[str, dict[str, Any]]] = []
    errors: dict[str, str] = {}
    order: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(source, start=1):
        if not raw.strip():
            continue
        problem: str | None
        try:
            line = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            problem = f"line {number}: not valid JSON ({getattr(exc, 'msg', 'nested too deeply')})"
            line = None
        else:
            problem = None if isinstance(line, dict) else f"line {number}: expected a JSON object"
        line_id = str(line.pop("id", number)) if isinstance(line, dict) else str(number)
        if problem is None and line_id in seen:
            problem = f"line {number}: id {line_id!r} is used by an earlier line"
        if problem is not None:
            key = f"{line_id}@line{number}"
            errors[key] = problem
            order.append(key)
            continue
        seen.add(line_id)
        order.append(line_id)
        requests.append((line_id, {**defaults, **line}))  # type: ignore[dict-item]
    return requests, errors, order


class Progress:
    """A progress line: redrawn in place on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr):
        self.total, self.stream = total, stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_plain = 0.0

    def show(self, done: int, failed: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.tty and not final and now - self.last_plain < 5:
            return
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        width = 30
        filled = int(width * done / self.total) if self.total else width
        text = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} done, {failed} failed, "
            f"{rate:.1f}/s, ETA {'-' if eta == float('inf') else f'{eta:.0f}s'}"
        )
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
            self.last_plain = now
        self.stream.flush()


@click.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "target", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--kind", type=click.Choice(["generate", "embed", "classify"]), help="For lines without one.")
@click.option("--tier", help="For lines without one.")
@click.option("--model", help="For lines without one.")
@click.option("--batch-id", help="Default: derived from the input and output paths (so a re-run resumes).")
@click.option("--chunk", type=int, default=500, show_default=True, help="Lines recorded per transaction.")
@click.option("--timeout", type=float, default=24 * 3600, show_default=True, help="Seconds to wait for the jobs.")
def batch(
    source: Path,
    target: Path,
    kind: str | None,
    tier: str | None,
    model: str | None,
    batch_id: str | None,
    chunk: int,
    timeout: float,
) -> None:
    """Run every line of SOURCE (JSON Lines) as a job and write one result line per input line to OUTPUT."""
    from broker.client import Router

    defaults = {key: value for key, value in (("kind", kind), ("tier", tier), ("model", model)) if value}
    with source.open(encoding="utf-8") as handle:
        requests, errors, order = read_lines(handle, defaults)
    batch_id = batch_id or str(uuid.uuid5(NAMESPACE, f"{source.resolve()}\n{target.resolve()}"))
    if len(batch_id) > 64:
        fail("--batch-id: at most 64 characters", code=EXIT_INVALID)
    for message in errors.values():
        click.echo(f"error: {message}", err=True)

    job_ids: dict[str, str] = {}
    with Router() as router:
        for start in range(0, len(requests), chunk):
            part = requests[start : start + chunk]
            ids = [str(uuid.uuid5(NAMESPACE, f"{batch_id}\n{line_id}")) for line_id, _ in part]
            submitted = router.batch([request for _, request in part], batch_id=batch_id, job_ids=ids)
            for position, (line_id, _) in enumerate(part):
                if position in submitted.errors:
                    errors[line_id] = f"line id {line_id}: {submitted.errors[position]}"
                    click.echo(f"error: {errors[line_id]}", err=True)
                else:
                    job_ids[line_id] = ids[position]
        outcomes = _wait(router, batch_id, job_ids, len(errors), timeout)
    failed = _write(target, order, errors, job_ids, outcomes)
    click.echo(
        f"{len(job_ids) - failed} succeeded, {failed} failed, {len(errors)} invalid; results in {target} "
        f"(batch {batch_id})",
        err=True,
    )
    sys.exit(1 if failed or errors else 0)


def _wait(router: Any, batch_id: str, job_ids: dict[str, str], invalid: int, timeout: float) -> dict[str, Any]:
    """Follow the batch by its counts (one small query a poll, however long the file), then read every
    job once; a job the counts called done but that is not (a batch id reused) is waited for too."""
    progress = Progress(len(job_ids) + invalid)
    deadline = time.monotonic() + timeout
    views: dict[str, Any] = {}
    pending = list(job_ids.values())
    while True:
        counts = router.store.batch_counts(batch_id)
        ended = min(len(job_ids), sum(counts.get(status, 0) for status in FINAL))
        failed = min(ended, counts.get("failed", 0) + counts.get("rejected", 0)) + invalid
        if ended >= len(job_ids) or time.monotonic() > deadline:
            views.update(router.store.statuses(pending))
            pending = [job_id for job_id in pending if views.get(job_id) is None or views[job_id].status not in FINAL]
            if not pending or time.monotonic() > deadline:
                failed = sum(1 for view in views.values() if view.status in ("failed", "rejected")) + invalid
                progress.show(len(job_ids) - len(pending) + invalid, failed, final=True)
                return views
        progress.show(ended + invalid, failed)
        time.sleep(0.5)


def _write(
    target: Path, order: list[str], errors: dict[str, str], job_ids: dict[str, str], views: dict[str, Any]
) -> int:
    """One line per input line, in input order; returns how many jobs did not succeed."""
    failed = 0
    scratch = target.with_name(target.name + ".partial")
    with scratch.open("w", encoding="utf-8") as out:
        for key in order:
            if key in errors:
                record: dict[str, Any] = {"id": key.split("@line", 1)[0], "status": "invalid", "error": errors[key]}
            else:
                view = views.get(job_ids[key])
                if view is not None and view.status == "succeeded":
                    record = {"id": key, "status": "succeeded", "job_id": view.id, "result": view.result}
                else:
                    failed += 1
                    record = {
                        "id": key,
                        "status": view.status if view else "missing",
                        "job_id": job_ids[key],
                        "error": view.error if view else "no record",
                    }
            out.write(json.dumps(record) + "\n")
    scratch.replace(target)
    return failed
