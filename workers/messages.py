"""Parsing what arrives on a queue. A message is untrusted input like any other.

The client sends ``[job_id]`` for one job, or ``job_ids=[…]`` for a bulk message of many jobs of one kind;
a hand-written producer may send ``job_id`` and the whole ``request`` as keyword arguments. Anything else is
a bad message: recorded ``rejected`` when it names a usable job id, logged and dropped when it does not.
A bad message never raises out of the task.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cursor:
    """Where a re-published job resumes: the model's position in the chain, its retries so far, and the
    model to run there when a downgrade replaced the chain's own."""

    position: int = 0
    retry: int = 0
    model: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "retry": self.retry, "model": self.model}


@dataclass(frozen=True)
class JobMessage:
    job_id: str
    request: dict[str, Any] | None
    cursor: Cursor = Cursor()


class BadMessage(Exception):
    """The message cannot be turned into a job; ``job_id`` is set when one could still be read."""

    def __init__(self, reason: str, job_id: str | None = None):
        super().__init__(reason)
        self.job_id = job_id


def _job_id(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


MAX_JOBS_PER_MESSAGE = 1024


class BadBulkMessage(BadMessage):
    """A bulk message that cannot be run; ``job_ids`` lists the ids that could be read, to record them."""

    def __init__(self, reason: str, job_ids: list[str]):
        super().__init__(reason)
        self.job_ids = job_ids


def parse_messages(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[JobMessage]:
    """The jobs a message carries: one, or many for a bulk message."""
    if "job_ids" not in kwargs:
        return [parse_message(args, kwargs)]
    raw = kwargs["job_ids"]
    if not isinstance(raw, list):
        raise BadMessage(f"job_ids: expected a list of UUID strings, got {type(raw).__name__}")
    ids = [job_id for job_id in map(_job_id, raw[:MAX_JOBS_PER_MESSAGE]) if job_id is not None]
    if args or set(kwargs) != {"job_ids"}:
        raise BadBulkMessage("unexpected arguments: a bulk message carries job_ids=[…] and nothing else", ids)
    if not 1 <= len(raw) <= MAX_JOBS_PER_MESSAGE:
        raise BadBulkMessage(f"job_ids: expected 1 to {MAX_JOBS_PER_MESSAGE} ids, got {len(raw)}", ids)
    if len(ids) != len(raw):
        raise BadBulkMessage(f"job_ids: {len(raw) - len(ids)} of {len(raw)} entries are not UUID strings", ids)
    if len(set(ids)) != len(ids):
        raise BadBulkMessage("job_ids: an id appears twice", sorted(set(ids)))
    return [JobMessage(job_id=job_id, request=None) for job_id in ids]


def parse_message(args: tuple[Any, ...], kwargs: dict[str, Any]) -> JobMessage:
    raw_id = kwargs.get("job_id", args[0] if args else None)
    job_id = _job_id(raw_id)
    if job_id is None:
        raise BadMessage(f"job_id: expected a UUID string, got {type(raw_id).__name__}")
    unexpected = sorted(set(kwargs) - {"job_id", "request", "cursor"})
    if len(args) > 1 or unexpected:
        raise BadMessage(
            f"unexpected arguments: expected [job_id] or job_id=…, request=…; got {len(args)} positional "
            f"and {', '.join(unexpected) or 'no'} extra keyword arguments",
            job_id,
        )
    request = kwargs.get("request")
    if request is not None and not isinstance(request, dict):
        raise BadMessage(f"request: expected a JSON object, got {type(request).__name__}", job_id)
    return JobMessage(job_id=job_id, request=request, cursor=_cursor(kwargs.get("cursor"), job_id))


def _cursor(value: Any, job_id: str) -> Cursor:
    if value is None:
        return Cursor()
    if not isinstance(value, dict):
        raise BadMessage(f"cursor: expected a JSON object, got {type(value).__name__}", job_id)
    position, retry, model = value.get("position", 0), value.get("retry", 0), value.get("model")
    numbers_ok = all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 1000 for n in (position, retry))
    if not numbers_ok or not (model is None or (isinstance(model, str) and 0 < len(model) <= 200)):
        raise BadMessage("cursor: position and retry must be integers 0-1000 and model a model id", job_id)
    return Cursor(position=position, retry=retry, model=model)
