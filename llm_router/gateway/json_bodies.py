"""JSON bodies without a JSON content type. ``curl -d`` sends ``application/x-www-form-urlencoded`` and some
clients send no type at all; the gateway takes no form (its file upload is multipart), so such a body is read
as the JSON it is instead of failing as "not a valid dictionary"."""

from __future__ import annotations

from typing import Any

FORM = b"application/x-www-form-urlencoded"
JSON = b"application/json"
WITH_BODY = {"POST", "PUT", "PATCH"}


def as_json(headers: list[tuple[bytes, bytes]], path: str, raw_paths: frozenset[str]) -> list[tuple[bytes, bytes]]:
    """The request's headers with a missing or form content type read as JSON (``raw_paths`` read their body
    themselves and keep what they were sent)."""
    if path in raw_paths:
        return headers
    types = [value for name, value in headers if name.lower() == b"content-type"]
    if types and types[0].split(b";")[0].strip().lower() != FORM:
        return headers
    return [(name, value) for name, value in headers if name.lower() != b"content-type"] + [(b"content-type", JSON)]


class JsonBodies:
    """ASGI middleware applying ``as_json`` to requests that carry a body."""

    def __init__(self, app: Any, raw_paths: frozenset[str] = frozenset()):
        self.app, self.raw_paths = app, raw_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in WITH_BODY:
            scope = {**scope, "headers": as_json(list(scope["headers"]), scope["path"], self.raw_paths)}
        await self.app(scope, receive, send)
