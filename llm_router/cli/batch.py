"""``llm-router batch IN.jsonl -o OUT.jsonl``: one job per line, progress while they run, one result line
per input line in input order, and a re-run after an interruption that submits nothing twice.

Each job's id is derived from the batch id, the line's identity (its ``id``, or its line number when it has
none) and the line's content. Running the same command again finds the jobs already recorded instead of
creating new ones, and waits for them; a line whose content changed since is a new job, never answered with
the result of the line it replaced. The batch id is derived from the input path (or given as
``--batch-id``), so correcting a mistyped output path resumes the same batch.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click

from llm_router.cli.output import EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT, fail
from llm_router.tasks.records import FINAL_STATUSES, JobStatus

NAMESPACE = uuid.UUID("6f1c2a52-0d4e-4c35-9a7e-3b8e5d2f9c41")


@dataclass(frozen=True)
class Line:
    """One input line: its number, the id it gave (a string or an integer; None when it gave none), and
    the request read from it or the reason it could not be read."""

    number: int
    given_id: str | int | None
    request: dict[str, Any] | None = None
    error: str | None = None

    @property
    def identity(self) -> str:
        """What names the line inside its batch: an id and a line number never collide."""
        return f"line:{self.number}" if self.given_id is None else f"id:{json.dumps(self.given_id)}"

    def job_id(self, batch_id: str) -> str:
        content = hashlib.sha256(json.dumps(self.request, sort_keys=True).encode()).hexdigest()
        return str(uuid.uuid5(NAMESPACE, f"{batch_id}\n{self.identity}\n{content}"))

    def output(self) -> dict[str, Any]:
        return {"line": self.number, "id": self.given_id}


def _line_id(line: dict[str, Any]) -> tuple[str | int | None, str | None]:
    if "id" not in line:
        return None, None
    value = line.pop("id")
    if isinstance(value, str) and 0 < len(value) <= 200:
        return value, None
    if isinstance(value, int) and not isinstance(value, bool):
        return value, None
    return None, "id: expected a string of 1 to 200 characters or an integer"


def read_lines(source: TextIO, defaults: dict[str, Any]) -> list[Line]:
    """Every non-blank line in file order, read or with the reason it could not be."""
    lines: list[Line] = []
    seen: set[str] = set()
    for number, raw in enumerate(source, start=1):
        if not raw.strip():
            continue
        try:
            parsed = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            lines.append(
                Line(number, None, error=f"line {number}: not valid JSON ({getattr(exc, 'msg', 'nested too deeply')})")
            )
            continue
        if not isinstance(parsed, dict):
            lines.append(Line(number, None, error=f"line {number}: expected a JSON object"))
            continue
        given_id, problem = _line_id(parsed)
        line = Line(number, given_id, request={**defaults, **parsed})
        if problem is None and line.identity in seen:
            problem = f"id {given_id!r} is used by an earlier line"
        if problem is not None:
            lines.append(Line(number, given_id, error=f"line {number}: {problem}"))
            continue
        seen.add(line.identity)
        lines.append(line)
    return lines


class Progress:
    """A progress line: redrawn in place on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr):
        self.total, self.stream = total, stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_plain = 0.0

    def show(self, done: int, failed: int, invalid: int = 0, final: bool = False) -> None:
        """``done`` counts the invalid lines too (they are done with); ``failed`` counts jobs only, as the
        summary does."""
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
            + (f"{invalid} invalid, " if invalid else "")
            + f"{rate:.1f}/s, ETA {'-' if eta == float('inf') else f'{eta:.0f}s'}"
        )
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
            self.last_plain = now
        self.stream.flush()


def _scratch(target: Path) -> Path:
    return target.with_name(target.name + ".partial")


def _check_writable(target: Path) -> None:
    """Fail before any job is submitted when the results could not be written."""
    try:
        with _scratch(target).open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        fail(f"-o/--output: cannot write {target}: {exc.strerror or exc}", code=EXIT_INVALID)


@click.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "target", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--kind", type=click.Choice(["generate", "embed", "classify"]), help="For lines without one.")
@click.option("--tier", help="For lines without one.")
@click.option("--model", help="For lines without one.")
@click.option("--batch-id", help="Default: derived from the input path (so a re-run resumes).")
@click.option(
    "--chunk", type=click.IntRange(min=1), default=500, show_default=True, help="Lines recorded per transaction."
)
@click.option("--timeout", type=click.FloatRange(min=0), default=24 * 3600, show_default=True, help="Seconds to wait.")
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
    """Run every line of SOURCE (JSON Lines) as a job and write one result line per input line to OUTPUT.

    Exit status: 0 every line succeeded, 1 some line failed or was invalid, 2 bad arguments, 3 the database
    or broker cannot be reached, 4 lines were still running when --timeout passed."""
    from llm_router.broker.client import Router

    batch_id = batch_id or str(uuid.uuid5(NAMESPACE, str(source.resolve())))
    if len(batch_id) > 64:
        fail("--batch-id: at most 64 characters", code=EXIT_INVALID)
    _check_writable(target)
    defaults = {key: value for key, value in (("kind", kind), ("tier", tier), ("model", model)) if value}
    with source.open(encoding="utf-8-sig") as handle:  # utf-8-sig: a byte-order mark is not part of line 1
        lines = read_lines(handle, defaults)
    errors: dict[int, str] = {line.number: line.error for line in lines if line.error is not None}
    for message in errors.values():
        click.echo(f"error: {message}", err=True)

    valid = [line for line in lines if line.error is None]
    job_ids: dict[int, str] = {}
    with Router() as router:
        for start in range(0, len(valid), chunk):
            part = valid[start : start + chunk]
            ids = [line.job_id(batch_id) for line in part]
            submitted = router.batch([line.request or {} for line in part], batch_id=batch_id, job_ids=ids)
            for position, line in enumerate(part):
                if position in submitted.errors:
                    errors[line.number] = f"line {line.number}: {submitted.errors[position]}"
                    click.echo(f"error: {errors[line.number]}", err=True)
                else:
                    job_ids[line.number] = ids[position]
        views = _wait(router, batch_id, job_ids, len(errors), timeout)
    failed, pending = _write(target, lines, errors, job_ids, views)
    click.echo(
        f"{len(job_ids) - failed - pending} succeeded, {failed} failed, {len(errors)} invalid"
        + (f", {pending} still running after {timeout:g}s" if pending else "")
        + f"; results in {target} (batch {batch_id})",
        err=True,
    )
    sys.exit(EXIT_FAILED if failed or errors else EXIT_TIMEOUT if pending else 0)


def _wait(router: Any, batch_id: str, job_ids: dict[int, str], invalid: int, timeout: float) -> dict[str, Any]:
    """Follow the batch by its counts (one small query a poll, however long the file), then read every
    job once; a job the counts called done but that is not (a batch id reused) is waited for too."""
    progress = Progress(len(job_ids) + invalid)
    deadline = time.monotonic() + timeout
    views: dict[str, Any] = {}
    pending = list(job_ids.values())
    while True:
        counts = router.store.batch_counts(batch_id)
        ended = min(len(job_ids), sum(counts.get(status, 0) for status in FINAL_STATUSES))
        failed = ended - min(ended, counts.get(JobStatus.SUCCEEDED, 0))
        if ended >= len(job_ids) or time.monotonic() > deadline:
            views.update(router.store.statuses(pending))
            pending = [job_id for job_id in pending if views.get(job_id) is None or not views[job_id].is_final]
            if not pending or time.monotonic() > deadline:
                unsucceeded = [view for view in views.values() if view.is_final and view.status != JobStatus.SUCCEEDED]
                progress.show(len(job_ids) - len(pending) + invalid, len(unsucceeded), invalid, final=True)
                return views
        progress.show(ended + invalid, failed, invalid)
        time.sleep(0.5)


def _write(
    target: Path, lines: list[Line], errors: dict[int, str], job_ids: dict[int, str], views: dict[str, Any]
) -> tuple[int, int]:
    """One line per input line, in input order; returns how many jobs failed and how many had not ended."""
    failed = pending = 0
    scratch = _scratch(target)
    with scratch.open("w", encoding="utf-8") as out:
        for line in lines:
            record = line.output()
            if line.number in errors:
                record.update(status="invalid", error=errors[line.number])
            else:
                job_id = job_ids[line.number]
                view = views.get(job_id)
                if view is not None and view.status == JobStatus.SUCCEEDED:
                    record.update(status=JobStatus.SUCCEEDED, job_id=job_id, result=view.result)
                elif view is not None and view.is_final:
                    failed += 1
                    record.update(status=view.status, job_id=job_id, error=view.error)
                else:
                    pending += 1
                    status = view.status if view is not None else "missing"
                    record.update(status=status, job_id=job_id, error="not finished when the wait ended")
            out.write(json.dumps(record) + "\n")
    scratch.replace(target)
    return failed, pending
