"""Running a pipeline on the cluster: a chain whose links are jobs. The producer records the run and its first
step; the worker that ends a step records and publishes the next (or ends the run), so a pipeline goes on
with no client waiting, and a step's failure ends it ``failed`` naming the step.

Every step is a job of its own (its batch id is the run's id, ``run_step`` its position) with a deterministic
id, so advancing twice — a redelivered message, the sweeper repairing a run whose worker died between
ending one step and starting the next — records each step once.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

from llm_router.broker.catalogue import Catalogue
from llm_router.broker.pipelines import PipelineSpec, StepAnswer, step_answer, step_request, tone_of
from llm_router.broker.planning import Planned, plan
from llm_router.broker.submitting import Submitter
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.records import JobStatus, RunStatus
from llm_router.tasks.schemas import parse_request
from llm_router.tasks.store import JobStore, JobView, RunView

STEP_NAMESPACE = uuid.UUID("5d0c1e7a-3b4f-5a92-8e61-7c2d9f0b4a13")
MAX_PIPELINE_TEXT = 8_192


def step_job_id(run_id: str, index: int) -> str:
    return str(uuid.uuid5(STEP_NAMESPACE, f"{run_id}:{index}"))


@dataclass(frozen=True)
class StepOutcome:
    name: str
    kind: str
    job_id: str | None
    status: str  # the job's, or "pending" before it is recorded
    answer: str | None = None  # generate: the text; classify: the best label; embed: the size
    latency_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class PipelineResult:
    """The guide's ``processText`` result (text, sentiment, response, embedding), with each step's job."""

    run_id: str
    name: str
    status: RunStatus
    text: str
    steps: list[StepOutcome]
    sentiment: str | None = None  # the first classify step's best label
    tone: str | None = None
    response: str | None = None  # the last generate step's text
    embedding: list[float] | None = None  # the last embed step's vector
    error: str | None = None


def start_pipeline(submitter: Submitter, name: str, text: Any, run_id: str | None = None) -> str:
    """Record a run of pipeline ``name`` on ``text`` and publish its first step; returns the run's id. A bad
    text, or a pipeline that does not exist, raises ``InvalidRequest`` with nothing recorded."""
    store, catalogue = submitter.store, submitter.catalogue
    pipelines = catalogue.all_pipelines
    if name not in pipelines:
        raise InvalidRequest(f"pipeline: no pipeline {name!r}; the catalogue has {', '.join(pipelines)}", field="name")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_PIPELINE_TEXT:
        raise InvalidRequest(f"text: expected 1 to {MAX_PIPELINE_TEXT} characters, not only spaces", field="text")
    spec = pipelines[name]
    run_id = run_id or str(uuid.uuid4())
    first = _checked(step_request(spec, 0, text, []), run_id, catalogue)  # raises before anything is recorded
    models = [step.model or step.tier or catalogue.default_tier for step in spec.steps]
    store.create_run(run_id, "pipeline", name, models, {"text": text, "pipeline": spec.model_dump(mode="json")})
    submitter.submit_step(step_job_id(run_id, 0), first, 0)
    return run_id


def _checked(request: dict[str, Any], run_id: str, catalogue: Catalogue) -> Planned:
    """A step's request, planned; raises ``InvalidRequest``."""
    return plan(parse_request({**request, "batch_id": run_id}), catalogue)


def _steps(store: JobStore, run_id: str) -> dict[int, JobView]:
    return {job.run_step: job for job in store.run_jobs(run_id) if job.run_step is not None}


def advance(submitter: Submitter, run_id: str) -> None:
    """Carry a pipeline on after its latest step ended: start the next step, or end the run. Safe to call
    again, from any process: a step is recorded once, and a run ends once."""
    store, catalogue = submitter.store, submitter.catalogue
    run = store.get_run(run_id)
    if run is None or run.kind != "pipeline" or run.is_final or not run.request:
        return
    spec = PipelineSpec.model_validate(run.request["pipeline"])
    text = str(run.request["text"])
    jobs = _steps(store, run_id)
    if not jobs:
        return
    latest = max(jobs)
    job = jobs[latest]
    if not job.is_final:
        return
    if job.status != JobStatus.SUCCEEDED or job.result is None:
        step = spec.steps[latest]
        error = f"step {latest + 1} ({step.name}) {job.status}: {job.error or 'no answer'}"
        store.finish_run(run_id, RunStatus.FAILED, _summary(run, spec, jobs), error)
        return
    if latest == len(spec.steps) - 1:
        store.finish_run(run_id, RunStatus.SUCCEEDED, _summary(run, spec, jobs))
        return
    request = {**step_request(spec, latest + 1, text, _answers(spec, jobs)), "batch_id": run_id}
    try:
        checked = _checked(request, run_id, catalogue)
    except InvalidRequest as exc:
        # The answers made a request no job may take (a reply too long to embed): recorded, and the end.
        following = spec.steps[latest + 1]
        store.reject(step_job_id(run_id, latest + 1), following.kind, str(exc), request)
        error = f"step {latest + 2} ({following.name}) rejected: {exc}"
        store.finish_run(run_id, RunStatus.FAILED, _summary(run, spec, jobs), error)
        return
    store.update_run(run_id, _summary(run, spec, jobs))
    submitter.submit_step(step_job_id(run_id, latest + 1), checked, latest + 1)


def _answers(spec: PipelineSpec, jobs: dict[int, JobView]) -> list[StepAnswer]:
    answers = []
    for index, step in enumerate(spec.steps):
        job = jobs.get(index)
        if job is None or job.status != JobStatus.SUCCEEDED or job.result is None:
            break
        answers.append(step_answer(step.name, step.kind, job.result))
    return answers


def _summary(run: RunView, spec: PipelineSpec, jobs: dict[int, JobView]) -> dict[str, Any]:
    result = pipeline_result(run, spec, jobs)
    return {"steps": [asdict(step) for step in result.steps], "sentiment": result.sentiment, "tone": result.tone}


def pipeline_result(run: RunView, spec: PipelineSpec, jobs: dict[int, JobView]) -> PipelineResult:
    answers = _answers(spec, jobs)
    steps = []
    for index, step in enumerate(spec.steps):
        job = jobs.get(index)
        answer = answers[index] if index < len(answers) else None
        shown = None
        if answer is not None:
            shown = answer.text if answer.vector is None else f"{len(answer.vector)} dimensions"
        steps.append(
            StepOutcome(
                step.name,
                step.kind,
                job.id if job else None,
                job.status if job else "pending",
                shown,
                job.latency_ms if job else None,
                job.error if job else None,
            )
        )
    classified = [a.text for a in answers if a.kind == "classify"]
    generated = [a.text for a in answers if a.kind == "generate"]
    embedded = [a.vector for a in answers if a.kind == "embed"]
    return PipelineResult(
        run_id=run.id,
        name=run.name,
        status=run.status,
        text=str((run.request or {}).get("text", "")),
        steps=steps,
        sentiment=classified[0] if classified else None,
        tone=tone_of(spec, answers),
        response=generated[-1] if generated else None,
        embedding=embedded[-1] if embedded else None,
        error=run.error,
    )


def read_pipeline(store: JobStore, run_id: str) -> PipelineResult | None:
    run = store.get_run(run_id)
    if run is None or run.kind != "pipeline" or not run.request:
        return None
    return pipeline_result(run, PipelineSpec.model_validate(run.request["pipeline"]), _steps(store, run_id))
