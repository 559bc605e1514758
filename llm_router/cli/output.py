"""Printing for the command line: one place for JSON output, tables and error exits."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any, NoReturn

import click

# Exit codes, one meaning each (documented in the README).
EXIT_FAILED = 1  # a job failed or was rejected (a batch: some line did not succeed)
EXIT_INVALID = 2  # the command's own input is invalid: nothing was submitted
EXIT_UNAVAILABLE = 3  # the database or the broker cannot be reached
EXIT_TIMEOUT = 4  # the wait ended before the job (or every line of a batch) did


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def require_local(what: str) -> None:
    """Refuse, in one line, work that runs models here when the ``local`` extra (torch, transformers) is not
    installed: the plain install is the client, the CLI, the gateway and the remote pool."""
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        fail(
            f"{what} runs models on this machine, which needs {' and '.join(missing)}: "
            "pip install 'llm-runner-router[local]'",
            code=EXIT_INVALID,
        )


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, default=_default, indent=2))


def fail(message: str, *, code: int = EXIT_FAILED, as_json: bool = False, **extra: Any) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"error": message, **extra}, default=_default))
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)
