"""The Batch API's reading of input files and its batch object are pure."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from llm_router.broker.catalogue import load_catalogue
from llm_router.gateway import batch_api
from llm_router.tasks.store import RunView

CATALOGUE = load_catalogue(None)


def _line(custom_id: object, body: object, url: str = "/v1/embeddings") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def test_each_line_is_valid_or_has_its_own_error() -> None:
    content = "\n".join(
        [
            _line("a", {"model": "fast", "input": "x"}),
            "{not json",
            _line("a", {"model": "fast", "input": "y"}),  # the id again
            _line("c", {"model": "fast", "input": "z"}, url="/v1/completions"),  # another endpoint
            _line("d", {"model": "fast", "input": "z", "dimensions": 8}),
            "",
            _line("e", {"model": "fast", "input": "last"}),
        ]
    )
    lines = batch_api.read_lines(content, "/v1/embeddings", CATALOGUE)
    assert lines.custom_ids == ["a", "line-2", "a", "c", "d", "e"]
    assert sorted(lines.requests) == [0, 5]
    assert lines.requests[0] == {"kind": "embed", "input": "x", "tier": "fast"}
    assert set(lines.errors) == {1, 2, 3, 4}
    assert "not JSON" in lines.errors[1] and "used twice" in lines.errors[2]
    assert "endpoint" in lines.errors[3] and "dimensions" in lines.errors[4]


def _run(summary: dict[str, object] | None, created: datetime | None = None) -> RunView:
    request = {
        "custom_ids": ["a", "b", "c"],
        "errors": {"2": "bad"},
        "endpoint": "/v1/embeddings",
        "completion_window": "24h",
    }
    return RunView(
        "batch_1",
        batch_api.RUN_KIND,
        "file-1",
        "running",
        [],
        request,
        summary,
        None,
        created or datetime.now(UTC),
        None,
    )


def test_the_batch_object_follows_its_jobs() -> None:
    running = batch_api.batch_object(_run(None), {"queued": 1, "succeeded": 1})
    assert running["status"] == "in_progress" and running["output_file_id"] is None
    assert running["request_counts"] == {"total": 3, "completed": 1, "failed": 1}  # the invalid line counts failed
    done = batch_api.batch_object(_run(None), {"succeeded": 2})
    assert done["status"] == "completed" and done["output_file_id"] == "batch_1-output"
    assert done["error_file_id"] == "batch_1-errors"
    cancelling = batch_api.batch_object(_run({"cancelled_at": 5}), {"running": 1, "succeeded": 1})
    assert cancelling["status"] == "cancelling"
    assert batch_api.batch_object(_run({"cancelled_at": 5}), {"cancelled": 1, "succeeded": 1})["status"] == "cancelled"
    assert batch_api.batch_object(_run({"expired_at": 9}), {"cancelled": 1, "succeeded": 1})["status"] == "expired"


def test_a_batch_expires_once_its_window_has_passed() -> None:
    now = datetime.now(UTC)
    assert not batch_api.past_window(_run(None, now - timedelta(hours=23)), now.timestamp())
    assert batch_api.past_window(_run(None, now - timedelta(hours=25)), now.timestamp())
