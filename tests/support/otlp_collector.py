"""A stand-in OpenTelemetry collector on 127.0.0.1: it takes OTLP/HTTP trace exports (protobuf, as the SDK's
exporter sends them) and keeps their spans."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support.http_server import BackgroundServer


@dataclass(frozen=True)
class ExportedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    service: str
    attributes: dict[str, Any]


class Collector:
    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                exported = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    collector.spans += list(_spans(exported))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = BackgroundServer(Handler)

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> Collector:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _spans(exported: ExportTraceServiceRequest) -> list[ExportedSpan]:
    found = []
    for resource_spans in exported.resource_spans:
        resource = {item.key: _value(item.value) for item in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(
                    ExportedSpan(
                        span.name,
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                        str(resource.get("service.name", "")),
                        {item.key: _value(item.value) for item in span.attributes},
                    )
                )
    return found
