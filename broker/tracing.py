"""OpenTelemetry traces of jobs: a producer's submission, the message it publishes (the W3C trace context
travels in the message's headers), the worker's run of that message, each attempt on a model, the HTTP call
of a remote one, and the final record.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``LLM_ROUTER_TRACING=1`` is set; then a process that has no
tracer provider of its own gets one that exports OTLP over HTTP (the ``tracing`` extra), named by
``OTEL_SERVICE_NAME`` or the process's role. An application that configured OpenTelemetry itself keeps its
provider: the spans go there. Off, nothing here costs more than a flag's test."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

log = logging.getLogger(__name__)

TRACER = "llm_router"
HEADERS = ("traceparent", "tracestate")  # what a message carries of its producer's trace


@cache
def enabled() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")) or os.environ.get("LLM_ROUTER_TRACING", "") in (
        "1",
        "true",
        "yes",
    )


_configured: set[int] = set()  # the processes (pids) that set tracing up: a forked child sets up its own


def configure(service: str, *, http_client_spans: bool = False) -> None:
    """Set tracing up in this process, once: a tracer provider exporting OTLP when the application has none,
    and, with ``http_client_spans``, a span for each HTTP call of httpx (the remote backends)."""
    if not enabled() or os.getpid() in _configured:
        return
    _configured.add(os.getpid())
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("tracing is on but OpenTelemetry's SDK is not installed: pip install 'llm-runner-router[tracing]'")
        return
    if not isinstance(trace.get_tracer_provider(), TracerProvider):  # the application's own wins
        name = os.environ.get("OTEL_SERVICE_NAME") or service
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    if http_client_spans:
        try:
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        except ImportError:
            return
        instrumentor = HTTPXClientInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def flush() -> None:
    """Export what is buffered (before a process ends)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if enabled() and force_flush is not None:
        force_flush()


def carrier() -> dict[str, str]:
    """The current trace context as message headers (none when tracing is off or no span is current)."""
    if not enabled():
        return {}
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


def context_of(headers: Mapping[str, Any] | None) -> otel_context.Context | None:
    """The producer's trace context that a message carries, or None."""
    if not enabled() or not headers:
        return None
    carried = {name: str(headers[name]) for name in HEADERS if headers.get(name)}
    return propagate.extract(carried) if carried else None


@contextmanager
def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    parent: otel_context.Context | None = None,
    links: list[otel_context.Context | None] | None = None,
) -> Iterator[trace.Span | None]:
    """A span of this process (a child of ``parent`` when given, else of the current span), or nothing when
    tracing is off. ``links`` name other traces the work belongs to (messages run together)."""
    if not enabled():
        yield None
        return
    tracer = trace.get_tracer(TRACER)
    linked = [trace.Link(trace.get_current_span(other).get_span_context()) for other in links or [] if other]
    clean = {key: value for key, value in (attributes or {}).items() if value is not None}
    with tracer.start_as_current_span(name, context=parent, attributes=clean, links=linked) as current:
        yield current


def note(current: trace.Span | None, **attributes: Any) -> None:
    """Attributes learnt while a span runs (an attempt's outcome, a job's tokens)."""
    if current is not None:
        current.set_attributes({key: value for key, value in attributes.items() if value is not None})
