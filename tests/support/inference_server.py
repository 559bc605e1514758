"""A real HTTP server on 127.0.0.1 that speaks the Inference API, OpenAI-compatible and TEI protocols.

Each path answers from a script of replies first (status codes, JSON bodies, ``estimated_time``,
``Retry-After``, delays, dropped connections), then from a default handler that answers as the real
service would. Every call is recorded with its headers, body and arrival time.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.http_server import BackgroundServer


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # close the connection without answering
    # Server-sent events instead of a JSON body: each item a ``data:`` line, then ``data: [DONE]`` unless
    # ``cut`` (the connection closes mid-stream), ``event_delay_s`` apart.
    events: list[Any] | None = None
    event_delay_s: float = 0.0
    cut: bool = False


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float
    raw: bytes = b""  # the body as it came (a signature covers these bytes)


Handler = Callable[[Any], Reply]


class InferenceServer(BackgroundServer):
    def __init__(self) -> None:
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self.calls: list[Call] = []
        self.closed_early = 0
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw.decode(errors="replace")
                reply = server._next(method, self.path, dict(self.headers.items()), body, raw)
                if reply.delay_s and not self._wait(reply.delay_s):
                    with server._lock:
                        server.closed_early += 1  # the client closed its call while the answer was made
                    self.close_connection = True
                    return
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if reply.events is not None:
                    self._stream(reply)
                    return
                payload = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a timeout test)

            def _wait(self, seconds: float) -> bool:
                """Sleep while the answer is "made"; False as soon as the client closed the connection."""
                deadline = time.monotonic() + seconds
                while (left := deadline - time.monotonic()) > 0:
                    ready, _, _ = select.select([self.connection], [], [], min(left, 0.05))
                    try:
                        if ready and not self.connection.recv(1, socket.MSG_PEEK):
                            return False
                    except ConnectionResetError:
                        return False
                return True

            def _stream(self, reply: Reply) -> None:
                self.close_connection = True  # no length: the stream ends when the connection closes
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for event in reply.events or []:
                        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(reply.event_delay_s)
                    if not reply.cut:
                        self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    with server._lock:
                        server.closed_early += 1  # the client closed the stream (a cancelled job)

            def do_POST(self) -> None:
                self._serve("POST")

            def do_GET(self) -> None:
                self._serve("GET")

        super().__init__(RequestHandler)

    def on(self, path: str, handler: Handler) -> None:
        """The default answer for ``path`` once its script is used up."""
        self._handlers[path] = handler

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path].extend(replies)

    def calls_to(self, path: str) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.path == path]

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self.calls.clear()

    def _next(self, method: str, path: str, headers: dict[str, str], body: Any, raw: bytes = b"") -> Reply:
        with self._lock:
            self.calls.append(Call(method, path, headers, body, time.monotonic(), raw))
            script = self._scripts.get(path)
            if script:
                return script.popleft()
        handler = self._handlers.get(path)
        if handler is None:
            return Reply(404, {"error": f"Model {path} does not exist"})
        if method == "GET":  # a status check of a model that is served
            return Reply(200, {"modelId": path.removeprefix("/models/"), "state": "Loadable"})
        return handler(body)


# ---- default handlers that answer as the real services do ----------------------------------------------


def hf_generate(body: Any) -> Reply:
    return Reply(200, [{"generated_text": f" and so the story of {body['inputs'][:20]} goes on."}])


def hf_classify(body: Any) -> Reply:
    def labels(text: str) -> list[dict[str, Any]]:
        positive = 0.95 if "love" in text else 0.05
        ranked = [{"label": "POSITIVE", "score": positive}, {"label": "NEGATIVE", "score": 1 - positive}]
        return sorted(ranked, key=lambda item: -item["score"])

    return Reply(200, [labels(text) for text in body["inputs"]])


def vectors(texts: list[str]) -> list[list[float]]:
    return [[float(len(text)), 1.0, 0.5] for text in texts]


def hf_embed(body: Any) -> Reply:
    return Reply(200, vectors(body["inputs"]))


def openai_chat(body: Any) -> Reply:
    content = "Paris is the capital of France."
    return Reply(
        200,
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        },
    )


def chat_chunks(model: str, pieces: list[str], usage: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """OpenAI's chat.completion.chunk events for ``pieces``: a role, the deltas, the finish, the usage."""

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model, "choices": [choice]}

    events = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": piece}) for piece in pieces]
    events.append(chunk({}, "stop"))
    if usage is not None:
        events.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage})
    return events


def openai_chat_streaming(body: Any) -> Reply:
    """``openai_chat``, streamed when asked (``stream: true``), usage last as ``stream_options`` asks."""
    if not body.get("stream"):
        return openai_chat(body)
    pieces = ["Paris", " is", " the", " capital", " of", " France", "."]
    usage = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    include = (body.get("stream_options") or {}).get("include_usage")
    return Reply(200, events=chat_chunks(body["model"], pieces, usage if include else None))


def openai_completion(body: Any) -> Reply:
    return Reply(
        200,
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": body["model"],
            "choices": [{"index": 0, "text": " there was a queue.", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9},
        },
    )


def openai_embeddings(body: Any) -> Reply:
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors(body["input"]))]
    return Reply(
        200,
        {
            "object": "list",
            "data": data[::-1],
            "model": body["model"],
            "usage": {"prompt_tokens": 6, "total_tokens": 6},
        },
    )


def tei_embed(body: Any) -> Reply:
    return Reply(200, vectors(body["inputs"]))


def tei_predict(body: Any) -> Reply:
    return hf_classify(body)
