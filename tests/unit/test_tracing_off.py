"""With tracing off (no OTEL_EXPORTER_OTLP_ENDPOINT, no LLM_ROUTER_TRACING), no span is made and a message
carries no trace context."""

from __future__ import annotations

import pytest

from llm_router.broker import tracing


def test_with_tracing_off_a_message_carries_no_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_ROUTER_TRACING", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    tracing.enabled.cache_clear()
    try:
        with tracing.span("llm_router.submit") as current:
            assert current is None and tracing.carrier() == {}
        assert tracing.context_of({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None
    finally:
        tracing.enabled.cache_clear()
