"""The guide's ``testModel``: a suite of cases run on one or more models, scored, and reported per model.

Every case on every model is a job of the run (batch id = run id), submitted through ``Router.batch`` into
the bulk lanes, so an evaluation never slows interactive traffic; ``concurrency`` bounds how many are
queued or running at once. Nothing is recorded until every case has been checked against every model.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from llm_router.broker.compare import Submitter, check_models
from llm_router.tasks.cases import MAX_CASE_FILE_BYTES, Case, parse_cases
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.expectations import SimilarTo, Verdict
from llm_router.tasks.records import JobStatus, RunStatus
from llm_router.tasks.reports import CaseResult, EvaluationReport, evaluation_report
from llm_router.tasks.store import JobView

MAX_EVALUATED_MODELS = 8
RUN_NAMESPACE = uuid.UUID("0b7f3c52-8f5e-5b8e-9a3c-6e1d2f4a7c90")  # a run's job ids, from its id


class BatchSubmitter(Submitter, Protocol):
    def batch(
        self, requests: list[dict[str, Any]], *, batch_id: str | None = None, job_ids: list[str] | None = None
    ) -> Any: ...


@dataclass(frozen=True)
class Evaluation:
    run_id: str
    suite: str
    reports: list[EvaluationReport]  # one per model, in the order given
    timed_out: bool

    @property
    def all_passed(self) -> bool:
        return all(report.passed == report.total for report in self.reports)


@dataclass(frozen=True)
class _Planned:
    model: str
    case: Case
    job_id: str
    request: dict[str, Any]


def load_cases(path: Path) -> list[Case]:
    """The cases of a ``.yaml``/``.yml`` or ``.jsonl`` file; raises ``InvalidRequest`` naming the problem."""
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".jsonl"):
        raise InvalidRequest(f"{path}: expected a .yaml, .yml or .jsonl case file", field="cases")
    try:
        if path.stat().st_size > MAX_CASE_FILE_BYTES:
            raise InvalidRequest(f"{path}: larger than {MAX_CASE_FILE_BYTES // 2**20} MiB", field="cases")
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidRequest(f"{path}: cannot read it: {exc.strerror or exc}", field="cases") from None
    except UnicodeDecodeError:
        raise InvalidRequest(f"{path}: not UTF-8 text", field="cases") from None
    return parse_cases(text, "jsonl" if suffix == ".jsonl" else "yaml", str(path))


TIER_PREFIX = "tier:"


def _target(name: str, tier: str | None) -> dict[str, str | None]:
    """What a target names: a model (routed in ``tier`` when given), or ``tier:NAME``, a whole tier, whose
    model for each case's kind answers it (a suite of several kinds on the models production would use)."""
    if not name.startswith(TIER_PREFIX):
        return {"model": name, "tier": tier}
    if tier is not None:
        raise InvalidRequest(f"tier: {name!r} already names a tier; leave --tier out", field="tier")
    return {"model": None, "tier": name.removeprefix(TIER_PREFIX)}


def _plan(client: Submitter, run_id: str, models: list[str], cases: list[Case], tier: str | None) -> list[_Planned]:
    planned = []
    for model in models:
        target = _target(model, tier)
        for case in cases:
            request = {
                **case.request,
                "kind": case.kind,
                **target,
                "fallback": "none",  # the model under test answers, or the case fails
                "use_cache": False,  # an answer from the cache would measure nothing
            }
            request = {name: value for name, value in request.items() if value is not None}
            try:
                client.prepare(request)
            except InvalidRequest as exc:
                raise InvalidRequest(f"case {case.name!r} on {model}: {exc}", field=exc.field) from None
            job_id = str(uuid.uuid5(RUN_NAMESPACE, f"{run_id}:{model}:{case.name}"))
            planned.append(_Planned(model, case, job_id, request))
    return planned


def evaluate(
    client: BatchSubmitter,
    models: Any,
    cases: list[Case],
    *,
    suite: str = "cases",
    tier: str | None = None,
    concurrency: int | None = None,
    timeout_s: float = 600.0,
) -> Evaluation:
    """Run ``cases`` on each model and score the answers. Bad input (no model, too many, a case a model
    cannot take) raises ``InvalidRequest`` with nothing recorded."""
    chosen = check_models(models, MAX_EVALUATED_MODELS)
    if not cases:
        raise InvalidRequest("cases: give at least one case", field="cases")
    if concurrency is not None and not 1 <= concurrency <= 100_000:
        raise InvalidRequest(f"concurrency: expected 1 to 100000, got {concurrency}", field="concurrency")
    run_id = str(uuid.uuid4())
    planned = _plan(client, run_id, chosen, cases, tier)
    request = {"suite": suite, "cases": len(cases), "tier": tier, "concurrency": concurrency}
    client.store.create_run(run_id, "evaluate", f"evaluate {suite}", chosen, request)
    jobs = _run(client, run_id, planned, concurrency or len(planned), timeout_s)
    timed_out = len(jobs) < len(planned) or any(not job.is_final for job in jobs.values())
    reports = [
        evaluation_report(model, [score(p.case, model, jobs.get(p.job_id)) for p in planned if p.model == model])
        for model in chosen
    ]
    summary = {"reports": [asdict(report) for report in reports]}
    client.store.finish_run(run_id, RunStatus.TIMED_OUT if timed_out else RunStatus.SUCCEEDED, summary)
    return Evaluation(run_id, suite, reports, timed_out)


def _run(
    client: BatchSubmitter, run_id: str, planned: list[_Planned], concurrency: int, timeout_s: float
) -> dict[str, JobView]:
    """Submit the jobs, at most ``concurrency`` unfinished at once, and follow them until all are final or
    ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    waiting = list(planned)
    submitted: list[str] = []
    jobs: dict[str, JobView] = {}
    poll_s = client.settings.wait_poll_s
    delay = min(0.01, poll_s)
    while True:
        unfinished = sum(1 for job in jobs.values() if not job.is_final)
        room = concurrency - unfinished
        if waiting and room > 0:
            now, waiting = waiting[:room], waiting[room:]
            batch = client.batch([p.request for p in now], batch_id=run_id, job_ids=[p.job_id for p in now])
            assert not batch.errors, batch.errors  # each request was checked by _plan
            submitted += [p.job_id for p in now]
        jobs = client.store.statuses(submitted)
        if (not waiting and all(job.is_final for job in jobs.values())) or time.monotonic() >= deadline:
            return jobs
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * 1.5, max(poll_s, 0.25))


def score(case: Case, model: str, job: JobView | None) -> CaseResult:
    """A case's verdict from its job: the job must have succeeded and its answer meet the expectation."""
    if job is None or not job.is_final:
        return CaseResult(case.name, case.kind, model, "late", False, job.id if job else None, error="still running")
    if job.status != JobStatus.SUCCEEDED or job.result is None:
        return CaseResult(case.name, case.kind, model, job.status, False, job.id, job.latency_ms, error=job.error)
    result = job.result
    usage = result.get("usage") or {}
    tokens = int(usage.get("total_tokens") or usage.get("prompt_tokens") or 0)
    expectation = case.expectation
    verdict: Verdict | None
    if isinstance(expectation, SimilarTo):
        vectors = [item["embedding"] for item in result.get("data") or []]
        verdict, similarity = expectation.check_vectors(vectors[0], vectors[1])
        answer = f"cosine {similarity:.3f}"
    else:
        answer = str(result.get("text", "")) if case.kind == "generate" else _best_label(result)
        verdict = expectation.check(answer) if expectation is not None else None
    passed = verdict.passed if verdict is not None else True  # the guide: no expectation, no failure
    reason = verdict.reason if verdict is not None else None
    return CaseResult(case.name, case.kind, model, job.status, passed, job.id, job.latency_ms, tokens, answer, reason)


def _best_label(result: dict[str, Any]) -> str:
    labels = result.get("labels") or [{}]
    return str(labels[0].get("label", ""))
