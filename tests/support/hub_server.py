"""A real HTTP server on 127.0.0.1 that answers as the Hugging Face Hub API does, for ``HF_ENDPOINT``.

It serves the calls ``huggingface_hub`` makes to search (``GET /api/models``), describe
(``GET /api/models/{id}[/revision/{rev}]``) and download a model (``GET /api/models/{id}/tree/{rev}``, then
``HEAD``/``GET /{id}/resolve/{commit}/{file}``), with the Hub's status codes and ``X-Error-Code`` headers
for a missing model or revision and a gated one. Every request is recorded with its query parameters.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.http_server import BackgroundServer


@dataclass
class HubModel:
    id: str
    info: dict[str, Any] = field(default_factory=dict)  # pipeline_tag, downloads, tags, cardData, ...
    files: dict[str, bytes] = field(default_factory=dict)
    gated: str | bool = False  # "auto" or "manual": the files need an access this server never grants
    sha: str = "0123456789abcdef0123456789abcdef01234567"

    @classmethod
    def from_folder(cls, model_id: str, folder: Path, **info: Any) -> HubModel:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return cls(model_id, info, files)

    def describe(self, fields: list[str] | None) -> dict[str, Any]:
        full = {
            "id": self.id,
            "modelId": self.id,
            "author": self.id.split("/")[0],
            "sha": self.sha,
            "gated": self.gated,
            "private": False,
            "lastModified": "2026-10-01T12:00:00.000Z",
            "createdAt": "2025-01-01T12:00:00.000Z",
            "siblings": [{"rfilename": name} for name in self.files],
            **self.info,
        }
        if not fields:
            return full
        return {name: value for name, value in full.items() if name in (*fields, "id", "_id")}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class HubServer(BackgroundServer):
    def __init__(self, models: list[HubModel] | None = None) -> None:
        self.models: dict[str, HubModel] = {model.id: model for model in models or []}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer("GET")

            def do_HEAD(self) -> None:
                self._answer("HEAD")

            def _answer(self, method: str) -> None:
                parts = urlsplit(self.path)
                request = Request(method, unquote(parts.path), parse_qs(parts.query), dict(self.headers.items()))
                with hub._lock:
                    hub.requests.append(request)
                status, headers, body = hub.answer(request)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                if method == "GET":
                    self.wfile.write(body)

        super().__init__(Handler)

    def requests_to(self, prefix: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    # ---- the Hub's answers -------------------------------------------------------------------------------

    def answer(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        path = request.path
        if path == "/api/models":
            return self._search(request.query)
        if path.startswith("/api/models/"):
            return self._api_model(path.removeprefix("/api/models/").split("/"), request.query)
        segments = path.strip("/").split("/")
        if len(segments) >= 5 and segments[2] == "resolve":
            return self._file("/".join(segments[:2]), segments[3], "/".join(segments[4:]))
        return _error(404, "EntryNotFound", f"{path} is not served")

    def _search(self, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        found = list(self.models.values())
        if "pipeline_tag" in query:
            found = [m for m in found if m.info.get("pipeline_tag") == query["pipeline_tag"][0]]
        for wanted in query.get("filter", []):
            found = [m for m in found if wanted in m.info.get("tags", [])]
        if "author" in query:
            found = [m for m in found if m.id.split("/")[0] == query["author"][0]]
        if "search" in query:
            found = [m for m in found if query["search"][0].lower() in m.id.lower()]
        if "sort" in query:
            key = query["sort"][0]
            found.sort(key=lambda m: m.info.get(key) or 0, reverse=True)
        if "limit" in query:
            found = found[: int(query["limit"][0])]
        return _json(200, [m.describe(query.get("expand")) for m in found])

    def _api_model(self, segments: list[str], query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        model = self.models.get("/".join(segments[:2]))
        if model is None:
            return _error(404, "RepoNotFound", "Repository not found")
        rest = segments[2:]
        revision = rest[1] if len(rest) >= 2 and rest[0] in ("revision", "tree") else "main"
        if revision not in ("main", model.sha):
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if rest and rest[0] == "tree":
            entries = [
                {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name}
                for name, data in model.files.items()
            ]
            return _json(200, entries)
        return _json(200, model.describe(query.get("expand")))

    def _file(self, model_id: str, revision: str, name: str) -> tuple[int, dict[str, str], bytes]:
        model = self.models.get(model_id)
        if model is None:
            return _error(404, "RepoNotFound", "Repository not found")
        if model.gated:
            return _error(403, "GatedRepo", f"Access to model {model_id} is restricted")
        if revision not in ("main", model.sha):
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if name not in model.files:
            return _error(404, "EntryNotFound", f"{name} does not exist")
        data = model.files[name]
        headers = {"X-Repo-Commit": model.sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        return 200, {"Content-Type": "application/octet-stream", **headers}, data


def _json(status: int, body: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    status_, headers, body = _json(status, {"error": message})
    return status_, {**headers, "X-Error-Code": code, "X-Error-Message": message}, body
