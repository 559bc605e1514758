"""``llm-router submit`` and ``llm-router result``."""

from __future__ import annotations

import json
from typing import Any

import click

from llm_router.broker.client import Job, Result, Router, UnknownJob
from llm_router.cli.output import EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT, emit_json, fail
from llm_router.tasks.errors import ConfigurationError, InvalidRequest, JobError, JobRejected, JobTimeout
from llm_router.tasks.schemas import ClassifyResult, EmbedResult, GenerateResult


def describe_result(result: Result) -> str:
    if isinstance(result, GenerateResult):
        return result.text
    if isinstance(result, EmbedResult):
        dims = len(result.data[0].embedding) if result.data else 0
        return f"{len(result.data)} embedding(s) of {dims} dimensions"
    assert isinstance(result, ClassifyResult)
    return "\n".join(
        f"[{item.index}] " + ", ".join(f"{label.label} {label.score:.3f}" for label in item.labels)
        for item in result.data
    )


def _job_json(job: Job, result: Result | None) -> dict[str, Any]:
    return {**job.record().document(), "result": result.model_dump(mode="json") if result is not None else None}


def _finish(job: Job, wait: bool, timeout: float, as_json: bool) -> None:
    if not wait:
        if as_json:
            emit_json(_job_json(job, None))
        else:
            view = job.record()
            click.echo(f"{job.id} {view.status} ({view.kind}, tier {view.tier})")
        return
    try:
        result = job.wait(timeout=timeout)
    except JobTimeout as exc:
        fail(str(exc), code=EXIT_TIMEOUT, as_json=as_json, id=job.id, status=exc.status)
    except JobError as exc:
        code = EXIT_INVALID if isinstance(exc, JobRejected) else EXIT_FAILED
        fail(str(exc), code=code, as_json=as_json, id=job.id, status=exc.status)
    if as_json:
        emit_json(_job_json(job, result))
    else:
        click.echo(describe_result(result))


@click.command()
@click.argument("kind")
@click.argument("text", nargs=-1)
@click.option("--messages", help='Chat messages as JSON: [{"role": "user", "content": "…"}].')
@click.option("--model", help="A model of the catalogue (routes to the tier that lists it).")
@click.option("--tier", help="fast, balanced, quality or auto.")
@click.option("--max-tokens", type=int)
@click.option("--temperature", type=float)
@click.option("--top-p", type=float)
@click.option("--top-k", type=int)
@click.option("--repetition-penalty", type=float)
@click.option("--seed", type=int)
@click.option("--fallback", type=click.Choice(["tier", "model", "none"]))
@click.option("--deadline", "deadline_s", type=float, help="Seconds within which the job must start, or expire.")
@click.option("--priority", type=int, help="0 (default) to 9: higher is taken first among the tier's waiting jobs.")
@click.option("--callback-url", help="POST the job's final record here, signed (a completion webhook).")
@click.option("--params", "params_json", help="More request fields as a JSON object.")
@click.option(
    "--idempotency-key", help="Submitting again with this key (within LLM_ROUTER_IDEMPOTENCY_TTL_S) gets the same job."
)
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option("--stream", "stream", is_flag=True, help="generate: print the text as the model makes it.")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds --wait waits.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def submit(
    kind: str,
    text: tuple[str, ...],
    messages: str | None,
    params_json: str | None,
    wait: bool,
    stream: bool,
    timeout: float,
    as_json: bool,
    **options: Any,
) -> None:
    """Submit a KIND (generate, embed or classify) job. generate joins TEXT into one prompt; embed and
    classify take each TEXT as one input."""
    request: dict[str, Any] = {"kind": kind, **{k: v for k, v in options.items() if v is not None}}
    try:
        if messages is not None:
            request["messages"] = json_option("--messages", messages)
        if params_json is not None:
            extra = json_option("--params", params_json)
            if not isinstance(extra, dict):
                raise InvalidRequest("--params: expected a JSON object", field="params")
            request.update(extra)
        if kind == "generate" and text:
            request["prompt"] = " ".join(text)
        elif kind in ("embed", "classify"):
            request["input"] = text[0] if len(text) == 1 else list(text)
        elif text:
            request["text"] = list(text)  # lets validation name the unknown kind first
        if stream:
            request["stream"] = True
    except (InvalidRequest, ConfigurationError) as exc:
        fail(str(exc), code=EXIT_INVALID, as_json=as_json)
    try:
        router = Router()
    except ConfigurationError as exc:
        fail(str(exc), code=EXIT_INVALID, as_json=as_json)
    with router:
        try:
            job = router.submit(request)
        except InvalidRequest as exc:
            fail(str(exc), code=EXIT_INVALID, as_json=as_json)
        if stream and not as_json:
            _print_stream(job, timeout)
            return
        _finish(job, wait or stream, timeout, as_json)


def _print_stream(job: Job, timeout: float) -> None:
    try:
        for delta in job.stream(timeout):
            click.echo(delta, nl=False)
    except JobTimeout as exc:
        click.echo()
        fail(str(exc), code=EXIT_TIMEOUT)
    except JobError as exc:
        click.echo()
        fail(str(exc), code=EXIT_INVALID if isinstance(exc, JobRejected) else EXIT_FAILED)
    click.echo()


def json_option(name: str, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{name}: not valid JSON ({exc.msg} at character {exc.pos})", field=name) from None
    except RecursionError:
        raise InvalidRequest(f"{name}: JSON nested too deeply", field=name) from None


@click.command()
@click.argument("job_id", required=False)
@click.option("--batch", "batch_id", help="Show a batch's progress instead of one job.")
@click.option("--wait", is_flag=True, help="Wait until the job ends.")
@click.option("--timeout", type=float, default=300.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def result(job_id: str | None, batch_id: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Show a job's state and, once it succeeded, its result (or a batch's progress with --batch)."""
    if batch_id is not None:
        with Router() as router:
            counts = router.batch_progress(batch_id)
        if not counts:
            fail(f"--batch: no job is recorded under batch {batch_id}", code=EXIT_INVALID, as_json=as_json)
        if as_json:
            emit_json({"batch_id": batch_id, "jobs": sum(counts.values()), "by_status": counts})
        else:
            click.echo(
                f"batch {batch_id}: {sum(counts.values())} jobs, "
                + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            )
        return
    if job_id is None:
        fail("give a JOB_ID, or --batch BATCH_ID", code=EXIT_INVALID, as_json=as_json)
    try:
        job = Router().get(job_id)
    except UnknownJob as exc:
        fail(str(exc), code=EXIT_INVALID, as_json=as_json)
    if wait:
        _finish(job, True, timeout, as_json)
        return
    try:
        outcome = job.result()
    except JobError as exc:
        fail(str(exc), as_json=as_json, id=job.id, status=exc.status)
    if as_json:
        emit_json(_job_json(job, outcome))
    elif outcome is None:
        click.echo(f"{job.id} {job.status()}")
    else:
        click.echo(describe_result(outcome))


@click.command()
@click.argument("job_id", required=False)
@click.option("--batch", "batch_id", help="Cancel every unfinished job of a batch (or run) instead.")
@click.option("--json", "as_json", is_flag=True)
def cancel(job_id: str | None, batch_id: str | None, as_json: bool) -> None:
    """Cancel a job, or the unfinished jobs of a batch: waiting ones end cancelled and never run, running ones
    are asked to stop (a local generation stops at its next token), ended ones keep their results."""
    if (job_id is None) == (batch_id is None):
        fail("give a JOB_ID or --batch BATCH_ID", code=EXIT_INVALID, as_json=as_json)
    with Router() as router:
        if job_id is not None and router.store.get(job_id) is None:
            fail(f"job_id: no job {job_id}", code=EXIT_INVALID, as_json=as_json)
        outcome = router.cancel_batch(batch_id) if batch_id is not None else router.cancel_jobs([job_id or ""])
    if as_json:
        emit_json(outcome)
        return
    click.echo(
        f"cancelled {len(outcome.cancelled)} waiting job(s); asked {len(outcome.running)} running job(s) to stop; "
        f"{len(outcome.ended)} had ended"
    )
