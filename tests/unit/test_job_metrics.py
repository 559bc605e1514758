"""The job-level metrics on the laptop mode's SQLite (the same queries as on PostgreSQL), and the Grafana
dashboard and the monitoring notes asking only for metrics that exist."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llm_router.gateway.metrics import registry
from llm_router.tasks.database import make_engine, upgrade
from llm_router.tasks.schemas import Embedding, EmbedResult, Usage
from llm_router.tasks.store import JobStore, Lease
from tests.support.store import start_one, submit_one, succeed_one

REPO = Path(__file__).resolve().parents[2]
LEASE = Lease(owner="host:1", seconds=60, alive=lambda _: True)


def _store(tmp_path: Path) -> JobStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    upgrade(engine)
    return JobStore(engine)


def _samples(store: JobStore) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry(store, None)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_metrics_count_jobs_tokens_attempts_and_waiting_ones(tmp_path: Path) -> None:
    store = _store(tmp_path)
    done = str(uuid.uuid4())
    submit_one(store, job_id=done, kind="embed", request={"input": "x"}, tier="fast", queue="fast")
    number = start_one(store, done, model="m", provider="local", tier="fast", worker="w", lease=LEASE)
    assert isinstance(number, int)
    result = EmbedResult(model="m", data=[Embedding(index=0, embedding=[0.5])], usage=Usage.of(7))
    succeed_one(store, done, number, result=result, provider="local", model_latency_ms=12.0)
    submit_one(store, job_id=str(uuid.uuid4()), kind="embed", request={"input": "y"}, tier="fast", queue="fast.bulk")
    samples = _samples(store)
    ended = (
        "llm_router_jobs_ended_total",
        (("kind", "embed"), ("model", "m"), ("status", "succeeded"), ("tier", "fast")),
    )
    assert samples[ended] == 1
    waiting = ("llm_router_queue_jobs", (("lane", "bulk"), ("queue", "fast.bulk"), ("status", "queued")))
    assert samples[waiting] == 1
    tokens = ("llm_router_tokens_total", (("kind", "embed"), ("model", "m"), ("tier", "fast"), ("type", "prompt")))
    assert samples[tokens] == 7
    assert samples[("llm_router_attempts_total", (("model", "m"), ("status", "succeeded")))] == 1
    assert samples[("llm_router_latency_seconds_gcount", (("stage", "end_to_end"),))] == 1
    assert samples[("llm_router_latency_seconds_bucket", (("le", "+Inf"), ("stage", "model")))] == 1
    assert samples[("llm_router_latency_seconds_bucket", (("le", "0.01"), ("stage", "model")))] == 0  # 12 ms


def test_the_dashboard_and_the_notes_ask_for_metrics_that_exist() -> None:
    dashboard = json.loads((REPO / "ops" / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    tables = [line for line in (REPO / "docs" / "monitoring.md").read_text().splitlines() if line.startswith("|")]
    asked = {name for text in expressions + tables for name in re.findall(r"llm_router_\w+", text)}
    defined = set(re.findall(r'"(llm_router_\w+)"', (REPO / "llm_router" / "gateway" / "metrics.py").read_text()))
    known = defined | {f"{name}_total" for name in defined} | {f"{name}_bucket" for name in defined}
    assert len(asked) >= 9 and asked <= known, asked - known
