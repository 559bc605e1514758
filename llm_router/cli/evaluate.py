"""``llm-router evaluate``: a suite of cases on one or more models, the guide's test report, and JUnit XML."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from llm_router.broker.client import Router
from llm_router.broker.evaluation import Evaluation
from llm_router.cli.compare import clip
from llm_router.cli.output import EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT, emit_json, fail, table
from llm_router.tasks.errors import ConfigurationError, InvalidRequest
from llm_router.tasks.reports import CaseResult, junit_xml


def _cell(result: CaseResult) -> str:
    if not result.success:
        return f"ERROR {result.status}: {clip(result.error, 40)}"
    latency = f"{result.latency_ms:,.0f} ms" if result.latency_ms is not None else "-"
    return f"pass {latency}" if result.passed else f"FAIL {latency}: {clip(result.reason, 40)}"


def show_evaluation(evaluation: Evaluation) -> str:
    reports = evaluation.reports
    cases = reports[0].details
    rows = [
        [case.name, case.kind, *(_cell(report.details[index]) for report in reports)]
        for index, case in enumerate(cases)
    ]
    summary = [
        [r.model, r.total, r.passed, r.failed, f"{r.success_rate:.1f} %", r.avg_latency_ms, r.avg_tokens]
        for r in reports
    ]
    return "\n".join(
        [
            table(["case", "kind", *(report.model for report in reports)], rows),
            "",
            table(["model", "total", "passed", "failed", "success rate", "avg latency ms", "avg tokens"], summary),
            f"run {evaluation.run_id}"
            + (" (timed out: some cases were still running)" if evaluation.timed_out else ""),
        ]
    )


def _check_writable(path: Path, as_json: bool) -> None:
    """Fail before anything is submitted when the report could not be written; leave no file behind."""
    existed = path.exists()
    try:
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        fail(f"--junit: cannot write {path}: {exc.strerror or exc}", code=EXIT_INVALID, as_json=as_json)
    if not existed:
        path.unlink()


@click.command()
@click.argument("models", metavar="MODELS")
@click.argument("cases", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tier", help="The tier that runs the model(s), when several list it.")
@click.option("--concurrency", type=int, help="At most this many of the run's jobs queued or running at once.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML here.")
@click.option("--timeout", type=float, default=600.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def evaluate(
    models: str,
    cases: Path,
    tier: str | None,
    concurrency: int | None,
    junit_path: Path | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Run the CASES file (.yaml or .jsonl) on MODELS (comma-separated model ids, or tier:NAME for a tier's
    model of each case's kind) through the bulk lanes: one report per model, side by side.
    Exit 0 when every case passed, 1 when one failed, 4 when the wait ran out."""
    if junit_path is not None:
        _check_writable(junit_path, as_json)
    try:
        with Router() as router:
            evaluation = router.evaluate(models, cases, tier=tier, concurrency=concurrency, timeout=timeout)
    except (InvalidRequest, ConfigurationError) as exc:
        fail(str(exc), code=EXIT_INVALID, as_json=as_json)
    if junit_path is not None:
        junit_path.write_text(junit_xml(evaluation.reports, evaluation.suite), encoding="utf-8")
    if as_json:
        emit_json(
            {
                "run_id": evaluation.run_id,
                "suite": evaluation.suite,
                "timed_out": evaluation.timed_out,
                "reports": [asdict(report) for report in evaluation.reports],
            }
        )
    else:
        click.echo(show_evaluation(evaluation))
    if evaluation.timed_out:
        raise SystemExit(EXIT_TIMEOUT)
    if not evaluation.all_passed:
        raise SystemExit(EXIT_FAILED)
