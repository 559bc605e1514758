"""The guide's ``compareModels``: one request, one job per model, all at once across the pools.

The jobs are recorded under a run (their batch id is the run's id) and published as one Celery group; each
keeps its own record, attempts and usage. A model the catalogue does not know is a row that says so, never a
crash; the comparison returns once every job is final or ``timeout_s`` has passed (late rows say so, and
their jobs go on).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from llm_router.broker.planning import Planned
from llm_router.broker.settings import Settings
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.records import AttemptStatus, JobStatus, RunStatus, aware
from llm_router.tasks.reports import ComparisonSummary, ModelAnswer, rank_answers, summarise_comparison
from llm_router.tasks.schemas import Kind
from llm_router.tasks.store import JobStore, JobView

MAX_COMPARED_MODELS = 32


class Submitter(Protocol):
    """What a comparison needs of the client: its settings and store, and its one way to plan and submit."""

    settings: Settings
    store: JobStore

    def prepare(self, request: dict[str, Any]) -> Planned: ...

    def submit_together(self, jobs: list[tuple[str, Planned]]) -> None: ...


@dataclass(frozen=True)
class Comparison:
    run_id: str
    kind: str
    rows: list[ModelAnswer]  # the guide's order: successful by latency, then the rest
    summary: ComparisonSummary
    timed_out: bool


def check_models(models: Any, limit: int = MAX_COMPARED_MODELS) -> list[str]:
    """The models of a comparison or an evaluation: 1 to ``limit`` distinct ids."""
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if not isinstance(models, (list, tuple)) or not models:
        raise InvalidRequest("models: give at least one model", field="models")
    if len(models) > limit:
        raise InvalidRequest(f"models: at most {limit} models at once (got {len(models)})", field="models")
    if not all(isinstance(m, str) and m for m in models):
        raise InvalidRequest("models: each model is a non-empty string", field="models")
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated:
        raise InvalidRequest(f"models: {', '.join(repeated)} named more than once", field="models")
    return list(models)


def compare(
    client: Submitter, models: Any, kind: Kind, request: dict[str, Any], *, timeout_s: float = 120.0
) -> Comparison:
    """Run ``request`` (without ``kind`` and ``model``) on each model at once. Bad input (no models, too
    many, a bad prompt or parameter) raises ``InvalidRequest`` with nothing recorded."""
    chosen = check_models(models)
    run_id = str(uuid.uuid4())
    # A comparison measures the models: an answer from the cache would measure nothing.
    base = {"use_cache": False, **request, "kind": kind, "batch_id": run_id}
    planned: dict[str, Planned] = {}
    refused: dict[str, str] = {}
    for model in chosen:
        try:
            planned[model] = client.prepare({**base, "model": model})
        except InvalidRequest as exc:
            if exc.field != "model":
                raise  # the request itself is bad: the same for every model
            refused[model] = str(exc)
    store = client.store
    store.create_run(run_id, "compare", f"compare {kind}", chosen, {"kind": kind, **request})
    ids = {model: str(uuid.uuid4()) for model in planned}
    client.submit_together([(ids[model], job) for model, job in planned.items()])
    jobs = wait_for_jobs(store, list(ids.values()), timeout_s, client.settings.wait_poll_s)
    rows = [
        answer_of(model, jobs[ids[model]], store)
        if model in ids
        else ModelAnswer(model, "not_submitted", error=refused[model])
        for model in chosen
    ]
    summary = summarise_comparison(rows)
    timed_out = any(not job.is_final for job in jobs.values())
    record = {"summary": asdict(summary), "rows": [asdict(row) for row in rows]}
    store.finish_run(run_id, RunStatus.TIMED_OUT if timed_out else RunStatus.SUCCEEDED, record)
    return Comparison(run_id, kind, rank_answers(rows), summary, timed_out)


def wait_for_jobs(store: JobStore, job_ids: list[str], timeout_s: float, poll_s: float) -> dict[str, JobView]:
    """The jobs once all are final, or as they are when ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    delay = min(0.01, poll_s)
    while True:
        jobs = store.statuses(job_ids)
        if all(job.is_final for job in jobs.values()) or time.monotonic() >= deadline:
            return jobs
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * 1.5, max(poll_s, 0.25))


def _ms(later: Any, earlier: Any) -> float | None:
    if later is None or earlier is None:
        return None
    return (aware(later) - aware(earlier)).total_seconds() * 1000.0


def answer_text(kind: str, result: dict[str, Any]) -> str | None:
    """What a result says, in a line: the generated text, the best label, or the vectors' size."""
    if kind == "generate":
        return str(result.get("text", ""))
    if kind == "classify":
        best = (result.get("labels") or [{}])[0]
        return f"{best.get('label')} {best.get('score', 0.0):.3f}"
    data = result.get("data") or []
    return f"{len(data)} vector(s) of {len(data[0]['embedding']) if data else 0} dimensions"


def answer_of(model: str, job: JobView, store: JobStore) -> ModelAnswer:
    if not job.is_final:
        return ModelAnswer(model, "late", job.id, queue_ms=_ms(job.started_at, job.created_at))
    if job.status != JobStatus.SUCCEEDED or job.result is None:
        return ModelAnswer(model, job.status, job.id, latency_ms=job.latency_ms, error=job.error)
    succeeded = [a for a in store.attempts(job.id) if a.status == AttemptStatus.SUCCEEDED]
    usage = job.result.get("usage") or {}
    return ModelAnswer(
        model,
        job.status,
        job.id,
        latency_ms=job.latency_ms,
        queue_ms=_ms(job.started_at, job.created_at),
        model_ms=succeeded[-1].latency_ms if succeeded else None,
        tokens=int(usage.get("total_tokens") or usage.get("prompt_tokens") or 0),
        text=answer_text(job.kind, job.result),
    )
