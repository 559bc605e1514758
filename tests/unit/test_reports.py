"""The guide's reports and expectations as pure functions: comparison summary, test report, JUnit XML, and
the safe form of an expected pattern."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from llm_router.tasks.expectations import (
    AnyOf,
    Contains,
    HasLabel,
    Matches,
    SimilarTo,
    UnsafePattern,
    cosine,
    safe_pattern,
)
from llm_router.tasks.reports import (
    CaseResult,
    ModelAnswer,
    evaluation_report,
    junit_xml,
    rank_answers,
    summarise_comparison,
)


def test_the_comparison_summary_follows_the_guide() -> None:
    rows = [
        ModelAnswer("slow", "succeeded", latency_ms=300.0, tokens=10, text="a long answer indeed"),
        ModelAnswer("broken", "failed", error="boom"),
        ModelAnswer("quick", "succeeded", latency_ms=100.0, tokens=5, text="short"),
        ModelAnswer("waiting", "late"),
    ]
    summary = summarise_comparison(rows)
    assert (summary.successful, summary.failed, summary.late) == (2, 1, 1)
    assert summary.avg_latency_ms == 200 and summary.avg_tokens == 8  # round(7.5) is 8 (to even)
    assert summary.fastest == "quick" and summary.longest_response == "slow"
    assert [row.model for row in rank_answers(rows)] == ["quick", "slow", "broken", "waiting"]


def test_a_comparison_with_no_success_has_no_averages() -> None:
    summary = summarise_comparison([ModelAnswer("a", "failed", error="x"), ModelAnswer("b", "not_submitted")])
    assert (summary.successful, summary.failed) == (0, 2)
    assert summary.avg_latency_ms is None and summary.fastest is None and summary.longest_response is None


@pytest.mark.parametrize(
    ("expectation", "answer", "passed"),
    [
        (Contains("Paris"), "the capital is paris.", True),  # the guide ignores case
        (Contains("Paris"), "Lyon", False),
        (AnyOf(("hello", "hi")), "Hi there", True),  # one alternative is enough
        (AnyOf(("hello", "hi")), "Good day", False),
        (Matches(r"\b4\b"), "2 + 2 = 4.", True),
        (Matches(r"^\d{3}$"), "1234", False),
        (Matches(r"PARIS", ignore_case=False), "paris", False),  # case kept when asked
        (HasLabel("positive"), "POSITIVE", True),
        (HasLabel("NEGATIVE"), "POSITIVE", False),
    ],
)
def test_expectations(expectation: Contains | AnyOf | Matches | HasLabel, answer: str, passed: bool) -> None:
    verdict = expectation.check(answer)
    assert verdict.passed is passed
    assert (verdict.reason is None) is passed


def test_similarity_uses_the_guides_cosine() -> None:
    assert cosine([1.0, 0.0], [1.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 2.0]) == pytest.approx(0.0)
    verdict, value = SimilarTo("ref", 0.5).check_vectors([1.0, 1.0], [1.0, 0.0])
    assert verdict.passed and value == pytest.approx(0.7071, abs=1e-4)
    verdict, _ = SimilarTo("ref", 0.8).check_vectors([1.0, 1.0], [1.0, 0.0])
    assert not verdict.passed and "below 0.8" in (verdict.reason or "")


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("[", "does not compile"),
        ("(a+)+$", "nests a quantifier"),  # the classic exponential shape
        (r"^(\w+\s?)*$", "nests a quantifier"),  # the e-mail validator shape
        (r"(a)\1", "refers back to a group"),
        ("(a|aa)+$", "takes longer than 0.1 s"),  # overlapping alternatives: found by running it on a probe
        ("x" * 501, "1 to 500 characters"),
    ],
)
def test_unsafe_patterns_are_refused_with_the_reason(pattern: str, why: str) -> None:
    with pytest.raises(UnsafePattern, match=why):
        safe_pattern(pattern)


@pytest.mark.parametrize("pattern", [r"^\d{4}$", "hello|hi", r"(ab)+c", r"[A-Z][a-z]+ \d+", r"colou?r"])
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    safe_pattern(pattern)


def test_the_evaluation_report_and_its_junit_form() -> None:
    results = [
        CaseResult("greeting", "generate", "m", "succeeded", True, latency_ms=100.0, tokens=10, answer="hello"),
        CaseResult("math", "generate", "m", "succeeded", False, latency_ms=300.0, tokens=20, reason="no 4"),
        CaseResult("broken", "generate", "m", "failed", False, error="model failed"),
        CaseResult("label", "classify", "m", "succeeded", True, latency_ms=200.0, tokens=3, answer="POSITIVE"),
    ]
    report = evaluation_report("m", results)
    assert (report.total, report.passed, report.failed) == (4, 2, 2)
    assert report.success_rate == 50.0
    assert report.avg_latency_ms == 200 and report.avg_tokens == 11  # over the 3 jobs that succeeded
    root = ElementTree.fromstring(junit_xml([report], "suite"))
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "1")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["math"].find("failure") is not None and cases["math"].find("failure").get("message") == "no 4"  # type: ignore[union-attr]
    assert cases["broken"].find("error") is not None
    assert cases["greeting"].find("failure") is None and cases["greeting"].find("error") is None
