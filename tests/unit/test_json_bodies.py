"""A body sent without a JSON content type (``curl -d``'s form type, or none) is read as JSON; any other type,
and the paths that read their own body, keep what the client sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llm_router.gateway.json_bodies import JsonBodies, as_json

RAW = frozenset({"/v1/batches"})


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        ([], b"application/json"),
        ([(b"content-type", b"application/x-www-form-urlencoded")], b"application/json"),
        ([(b"Content-Type", b"application/x-www-form-urlencoded; charset=utf-8")], b"application/json"),
        ([(b"content-type", b"application/json")], b"application/json"),
        ([(b"content-type", b"multipart/form-data; boundary=x")], b"multipart/form-data; boundary=x"),
        ([(b"content-type", b"text/plain")], b"text/plain"),
    ],
)
def test_a_form_or_missing_type_reads_as_json(sent: list[tuple[bytes, bytes]], read: bytes) -> None:
    headers = as_json([(b"authorization", b"Bearer k"), *sent], "/v1/jobs", RAW)
    assert [value for name, value in headers if name.lower() == b"content-type"] == [read]
    assert (b"authorization", b"Bearer k") in headers


def test_a_path_that_reads_its_own_body_keeps_its_headers() -> None:
    sent = [(b"content-type", b"application/x-www-form-urlencoded")]
    assert as_json(sent, "/v1/batches", RAW) == sent


def test_the_middleware_rewrites_only_requests_with_a_body() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    middleware = JsonBodies(app, RAW)
    for method in ("POST", "GET"):
        asyncio.run(middleware({"type": "http", "method": method, "path": "/v1/jobs", "headers": []}, None, None))
    assert seen[0]["headers"] == [(b"content-type", b"application/json")]
    assert seen[1]["headers"] == []
