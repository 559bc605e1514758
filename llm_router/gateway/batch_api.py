"""OpenAI's Batch API on the bulk lanes: an uploaded JSON Lines file (``POST /v1/files``, purpose ``batch``)
becomes one job per line (``POST /v1/batches``), recorded as a run of kind ``openai-batch``; its status, the
counts and the output and error files (``GET /v1/files/{id}/content``) are read from the jobs. A cancelled
or expired batch keeps the lines that finished.

Each input line is ``{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body"}``; the output file
has a line per finished request, ``{"id", "custom_id", "response": {"status_code": 200, "request_id",
"body"}, "error": null}``, and the error file one per request that did not succeed (or was invalid), with
``response`` null and ``error`` ``{"code", "message"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llm_router.broker.catalogue import Catalogue
from llm_router.gateway import openai_format
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.records import UNFINISHED_STATUSES, JobStatus
from llm_router.tasks.schemas import EmbedResult, GenerateResult
from llm_router.tasks.store import JobView, RunView

RUN_KIND = "openai-batch"
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
COMPLETION_WINDOWS = {"24h": 24 * 3600.0}
MAX_LINES = 50_000  # as OpenAI's
OUTPUT, ERRORS = "-output", "-errors"


@dataclass
class Lines:
    """A batch file, read: the valid lines' requests and every line's custom id and error."""

    custom_ids: list[str] = field(default_factory=list)
    requests: dict[int, dict[str, Any]] = field(default_factory=dict)  # by line position
    errors: dict[int, str] = field(default_factory=dict)


def read_lines(content: str, endpoint: str, catalogue: Catalogue) -> Lines:
    """Every line of the file, each valid or with its error; a file that cannot be a batch raises."""
    rows = [line for line in content.splitlines() if line.strip()]
    if not rows:
        raise InvalidRequest("input_file_id: the file has no line", field="input_file_id")
    if len(rows) > MAX_LINES:
        raise InvalidRequest(f"input_file_id: at most {MAX_LINES:,} lines", field="input_file_id")
    lines = Lines()
    seen: set[str] = set()
    for position, raw in enumerate(rows):
        try:
            line = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            lines.custom_ids.append(f"line-{position + 1}")
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            lines.errors[position] = f"line {position + 1}: not JSON ({why})"
            continue
        custom_id = line.get("custom_id") if isinstance(line, dict) else None
        lines.custom_ids.append(str(custom_id) if custom_id is not None else f"line-{position + 1}")
        try:
            lines.requests[position] = _request(line, endpoint, catalogue, seen)
        except InvalidRequest as exc:
            lines.errors[position] = f"line {position + 1}: {exc}"
    return lines


def _request(line: Any, endpoint: str, catalogue: Catalogue, seen: set[str]) -> dict[str, Any]:
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str) or not line["custom_id"]:
        raise InvalidRequest("custom_id: required, a string", field="custom_id")
    if line["custom_id"] in seen:
        raise InvalidRequest(f"custom_id: {line['custom_id']!r} is used twice", field="custom_id")
    seen.add(line["custom_id"])
    if line.get("method", "POST") != "POST" or line.get("url") != endpoint:
        raise InvalidRequest(f"url: every line must POST to the batch's endpoint {endpoint}", field="url")
    body = line.get("body")
    if not isinstance(body, dict):
        raise InvalidRequest("body: required, an object", field="body")
    if endpoint == "/v1/embeddings":
        request = openai_format.embedding_request(body, catalogue)
    elif endpoint == "/v1/chat/completions":
        request = openai_format.chat_request({**body, "stream": False}, catalogue)
    else:
        request = openai_format.completion_request({**body, "stream": False}, catalogue)
    request.pop("stream", None)
    return request


MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512  # as OpenAI's


def metadata(value: Any) -> dict[str, str] | None:
    """A batch's ``metadata``: at most 16 pairs of strings (keys up to 64 characters, values up to 512)."""
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA_PAIRS
        or not all(isinstance(k, str) and len(k) <= MAX_METADATA_KEY for k in value)
        or not all(isinstance(v, str) and len(v) <= MAX_METADATA_VALUE for v in value.values())
    ):
        raise InvalidRequest(
            f"metadata: at most {MAX_METADATA_PAIRS} pairs of strings (keys up to {MAX_METADATA_KEY} characters, "
            f"values up to {MAX_METADATA_VALUE})",
            field="metadata",
        )
    return value


def record(
    batch_id: str, tenant: str, endpoint: str, input_file_id: str, window: str, lines: Lines, jobs: dict[int, str]
) -> dict[str, Any]:
    """What the batch's run keeps: enough to answer for it, and to map each job back to its line."""
    return {
        "tenant": tenant,
        "endpoint": endpoint,
        "input_file_id": input_file_id,
        "completion_window": window,
        "custom_ids": lines.custom_ids,
        "job_ids": [jobs.get(position) for position in range(len(lines.custom_ids))],
        "errors": {str(position): error for position, error in lines.errors.items()},
    }


def past_window(run: RunView, now: float) -> bool:
    """Whether the batch's completion window has passed (it then expires: its unfinished jobs are cancelled)."""
    window = COMPLETION_WINDOWS.get((run.request or {}).get("completion_window", ""), COMPLETION_WINDOWS["24h"])
    return now > run.created_at.timestamp() + window


def batch_object(run: RunView, counts: dict[str, int]) -> dict[str, Any]:
    """The OpenAI batch object of a run, from its jobs' counts by status."""
    kept = run.request or {}
    total = len(kept.get("custom_ids", []))
    invalid = len(kept.get("errors", {}))
    unfinished = sum(counts.get(status, 0) for status in UNFINISHED_STATUSES)
    succeeded = counts.get(JobStatus.SUCCEEDED, 0)
    failed = invalid + sum(counts.values()) - unfinished - succeeded
    cancelled_at, expired_at = (run.summary or {}).get("cancelled_at"), (run.summary or {}).get("expired_at")
    if expired_at is not None:
        status = "expired"  # its window passed: what had not finished was cancelled, what had is kept
    elif cancelled_at is not None:
        status = "cancelling" if unfinished else "cancelled"
    elif unfinished:
        status = "in_progress"
    else:
        status = "completed"
    ended = status in ("completed", "cancelled", "expired")
    return {
        "id": run.id,
        "object": "batch",
        "endpoint": kept.get("endpoint"),
        "input_file_id": kept.get("input_file_id"),
        "completion_window": kept.get("completion_window"),
        "status": status,
        "output_file_id": run.id + OUTPUT if ended else None,
        "error_file_id": run.id + ERRORS if ended and failed else None,
        "created_at": int(run.created_at.timestamp()),
        "cancelled_at": cancelled_at,
        "expired_at": expired_at,
        "request_counts": {"total": total, "completed": succeeded, "failed": failed},
        "metadata": kept.get("metadata"),
        "errors": None,
    }


def output_lines(run: RunView, jobs: list[JobView], errors: bool) -> str:
    """The batch's output file (the lines that succeeded) or error file (the others, and invalid lines)."""
    kept = run.request or {}
    endpoint, custom_ids = kept.get("endpoint"), kept.get("custom_ids", [])
    position_of = {job_id: position for position, job_id in enumerate(kept.get("job_ids", [])) if job_id}
    out: list[dict[str, Any]] = []
    if errors:
        for position, message in sorted(kept.get("errors", {}).items(), key=lambda item: int(item[0])):
            out.append(_error_line(f"line-{position}", custom_ids[int(position)], "invalid_request", message))
    for job in sorted(jobs, key=lambda job: position_of.get(job.id, 0)):
        position = position_of.get(job.id)
        if position is None or not job.is_final:
            continue
        custom_id = custom_ids[position]
        if job.status == JobStatus.SUCCEEDED and not errors:
            body = _body(endpoint, job)
            response = {"status_code": 200, "request_id": job.id, "body": body}
            out.append({"id": f"batch_req_{job.id}", "custom_id": custom_id, "response": response, "error": None})
        elif job.status != JobStatus.SUCCEEDED and errors:
            out.append(_error_line(job.id, custom_id, f"job_{job.status}", job.error or job.status))
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in out)


def _error_line(request_id: str, custom_id: str, code: str, message: str) -> dict[str, Any]:
    return {
        "id": f"batch_req_{request_id}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def _body(endpoint: str | None, job: JobView) -> dict[str, Any]:
    created = int((job.finished_at or job.created_at).timestamp())
    if endpoint == "/v1/embeddings":
        return openai_format.embeddings(EmbedResult.model_validate(job.result))
    result = GenerateResult.model_validate(job.result)
    if endpoint == "/v1/chat/completions":
        return openai_format.chat_completion(job.id, result, created)
    return openai_format.completion(job.id, result, created)
