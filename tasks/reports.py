"""The guide's reports, as pure functions of the rows a run produced: ``analyzeResults`` for a comparison,
``generateTestReport`` for an evaluation, and the same evaluation as JUnit XML for a CI system."""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree import ElementTree

from llm_router.tasks.records import UNFINISHED_STATUSES, JobStatus


@dataclass(frozen=True)
class ModelAnswer:
    """One model's row of a comparison. ``status`` is the job's (``late`` when the wait ended first,
    ``not_submitted`` when the request was refused before it was recorded)."""

    model: str
    status: str
    job_id: str | None = None
    latency_ms: float | None = None  # submitted → final
    queue_ms: float | None = None  # submitted → a worker started it
    model_ms: float | None = None  # the successful attempt's own time
    tokens: int | None = None
    text: str | None = None
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.status == JobStatus.SUCCEEDED


@dataclass(frozen=True)
class ComparisonSummary:
    successful: int
    failed: int
    late: int
    avg_latency_ms: int | None
    avg_tokens: int | None
    fastest: str | None
    longest_response: str | None


def _mean(values: list[float]) -> int | None:
    return round(sum(values) / len(values)) if values else None


def rank_answers(rows: list[ModelAnswer]) -> list[ModelAnswer]:
    """The guide's order: successful rows by latency, fastest first; then the others as they came."""
    done = sorted((r for r in rows if r.success), key=lambda r: r.latency_ms or 0.0)
    return done + [r for r in rows if not r.success]


def summarise_comparison(rows: list[ModelAnswer]) -> ComparisonSummary:
    """The guide's ``analyzeResults``: counts, average latency and tokens of the successful rows, the fastest
    model and the one with the longest response."""
    done = [r for r in rows if r.success]
    late = [r for r in rows if r.status == "late" or r.status in UNFINISHED_STATUSES]
    fastest = min(done, key=lambda r: r.latency_ms or 0.0, default=None)
    longest = max(done, key=lambda r: len(r.text or ""), default=None)
    return ComparisonSummary(
        successful=len(done),
        failed=len(rows) - len(done) - len(late),
        late=len(late),
        avg_latency_ms=_mean([r.latency_ms or 0.0 for r in done]),
        avg_tokens=_mean([float(r.tokens or 0) for r in done]),
        fastest=fastest.model if fastest else None,
        longest_response=longest.model if longest else None,
    )


@dataclass(frozen=True)
class CaseResult:
    """One case of an evaluation on one model. ``success``: the job succeeded; ``passed``: and its answer
    met the expectation."""

    name: str
    kind: str
    model: str
    status: str
    passed: bool
    job_id: str | None = None
    latency_ms: float | None = None
    tokens: int | None = None
    answer: str | None = None  # the text, the best label, or the cosine
    reason: str | None = None  # why it did not pass
    error: str | None = None  # the job's error

    @property
    def success(self) -> bool:
        return self.status == JobStatus.SUCCEEDED


@dataclass(frozen=True)
class EvaluationReport:
    """The guide's ``generateTestReport`` for one model."""

    model: str
    total: int
    passed: int
    failed: int
    success_rate: float  # per cent of the cases that passed
    avg_latency_ms: int | None
    avg_tokens: int | None
    details: list[CaseResult] = field(default_factory=list)


def evaluation_report(model: str, results: list[CaseResult]) -> EvaluationReport:
    passed = [r for r in results if r.passed]
    done = [r for r in results if r.success]
    return EvaluationReport(
        model=model,
        total=len(results),
        passed=len(passed),
        failed=len(results) - len(passed),
        success_rate=100.0 * len(passed) / len(results) if results else 0.0,
        avg_latency_ms=_mean([r.latency_ms or 0.0 for r in done]),
        avg_tokens=_mean([float(r.tokens or 0) for r in done]),
        details=results,
    )


def junit_xml(reports: list[EvaluationReport], suite: str) -> str:
    """One ``<testsuite>`` per model, one ``<testcase>`` per case: a wrong answer is a ``<failure>``, a job
    that did not succeed an ``<error>``."""
    root = ElementTree.Element("testsuites", name=suite)
    for report in reports:
        errors = sum(1 for r in report.details if not r.success)
        element = ElementTree.SubElement(
            root,
            "testsuite",
            name=f"{suite} on {report.model}",
            tests=str(report.total),
            failures=str(report.failed - errors),
            errors=str(errors),
            time=f"{sum(r.latency_ms or 0.0 for r in report.details) / 1000:.3f}",
        )
        for result in report.details:
            case = ElementTree.SubElement(
                element,
                "testcase",
                name=result.name,
                classname=report.model,
                time=f"{(result.latency_ms or 0.0) / 1000:.3f}",
            )
            if not result.success:
                ElementTree.SubElement(case, "error", message=result.error or result.status, type=result.status)
            elif not result.passed:
                ElementTree.SubElement(case, "failure", message=result.reason or "failed", type="expectation")
            if result.answer is not None:
                ElementTree.SubElement(case, "system-out").text = result.answer
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
