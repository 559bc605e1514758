"""A job's trace, across processes: the producer's submission (the SDK's in-memory exporter, in this process)
is the parent of the worker's run of its message, which holds the attempt, the attempt the remote HTTP call
and the final record (exported over OTLP/HTTP by the worker to a stand-in collector on 127.0.0.1)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_router.broker import tracing
from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.tasks.schemas import GenerateResult
from tests.conftest import WorkerProcess, catalogue_env, catalogue_settings
from tests.support import inference_server as api
from tests.support.inference_server import InferenceServer
from tests.support.otlp_collector import Collector, ExportedSpan

BROKER = "redis://127.0.0.1:6379/6"  # a broker database of its own: this worker has its own catalogue
CHAT = "org/traced-chat"


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    started = Collector().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[InferenceServer]:
    started = InferenceServer().start()
    started.on("/v1/chat/completions", api.openai_chat)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def env(server: InferenceServer, collector: Collector, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    catalogue = f"""
default_tier = "traced"
tier_order = ["traced"]
[tiers.traced]
pool = "remote"
generate = ["{CHAT}"]
[models."{CHAT}"]
provider = "openai"
base_url = "{server.url}"
"""
    return catalogue_env(
        tmp_path_factory.mktemp("tracing"),
        catalogue,
        BROKER,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_BSP_SCHEDULE_DELAY="100",  # export every 0.1 s rather than 5 s
    )


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], env: dict[str, str]) -> Iterator[WorkerProcess]:
    started = start_worker("traced", "traced", env=env, options=("--pool", "remote"))
    yield started
    started.stop()


@pytest.fixture
def producer_spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, its spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setenv("LLM_ROUTER_TRACING", "1")
    tracing.enabled.cache_clear()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)  # this process's global stays untouched
    yield exporter
    tracing.enabled.cache_clear()


def _wait_for(collector: Collector, trace_id: str, names: set[str]) -> dict[str, ExportedSpan]:
    deadline = time.monotonic() + 30
    while True:
        spans = {span.name: span for span in collector.spans if span.trace_id == trace_id}
        if names <= set(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def test_a_jobs_trace_runs_from_the_submission_to_the_http_call_and_the_record(
    worker: WorkerProcess,
    env: dict[str, str],
    cluster_settings: Settings,
    collector: Collector,
    producer_spans: InMemorySpanExporter,
) -> None:
    with Router(catalogue_settings(cluster_settings, env)) as router:
        job = router.generate(messages=[{"role": "user", "content": "Hi"}], max_tokens=5, use_cache=False)
        assert isinstance(job.wait(timeout=60), GenerateResult)
    (submit,) = [span for span in producer_spans.get_finished_spans() if span.name == "llm_router.submit"]
    assert submit.attributes is not None and submit.attributes["llm_router.job_id"] == job.id
    trace_id = f"{submit.context.trace_id:032x}"
    spans = _wait_for(collector, trace_id, {"llm_router.message", "llm_router.attempt", "POST", "llm_router.record"})
    message, attempt = spans["llm_router.message"], spans["llm_router.attempt"]
    assert message.parent_id == f"{submit.context.span_id:016x}"  # the worker's run continues the producer's
    assert message.service == "llm-router-worker-remote" and message.attributes["llm_router.queue"] == "traced"
    assert attempt.parent_id == message.span_id
    assert attempt.attributes["llm_router.job_id"] == job.id and attempt.attributes["llm_router.model"] == CHAT
    assert attempt.attributes["llm_router.outcome"] == "succeeded"
    assert spans["POST"].parent_id == attempt.span_id  # the remote model's HTTP call
    assert spans["llm_router.record"].parent_id == attempt.span_id
