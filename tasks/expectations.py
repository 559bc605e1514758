"""What an evaluation case expects of an answer, and whether the answer meets it. Pure, no I/O.

The guide's ``evaluateResponse`` takes a substring, a list of alternatives or a function. A function cannot
travel in a case file, so its safe form is a regular expression: checked when the case file is read (it must
compile, and must not nest quantifiers or refer back to a group, the shapes that make matching take
exponential time) and run by the ``regex`` engine under a time limit, so no answer can hang an evaluation.
Embedding cases expect a cosine similarity to a reference text; classification cases a label.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

import regex

REGEX_TIME_LIMIT_S = 0.1
MAX_PATTERN_CHARS = 500
_REPEATS = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT}


class UnsafePattern(ValueError):
    pass


def _nested_repeat(items: Any, inside_repeat: bool) -> bool:
    for op, value in items:
        if op in _REPEATS:
            _low, high, body = value
            unbounded = high == sre_parse.MAXREPEAT or high > 1
            if unbounded and inside_repeat:
                return True
            if _nested_repeat(body, inside_repeat or unbounded):
                return True
        elif op == sre_parse.SUBPATTERN:
            if _nested_repeat(value[-1], inside_repeat):
                return True
        elif op == sre_parse.BRANCH:
            if any(_nested_repeat(branch, inside_repeat) for branch in value[1]):
                return True
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
            if _nested_repeat(value[1], inside_repeat):
                return True
        elif op in (sre_parse.GROUPREF, sre_parse.GROUPREF_EXISTS):
            raise UnsafePattern("refers back to a group (\\1, (?P=name)): matching it can take exponential time")
    return False


_CATEGORY_SAMPLES = {"DIGIT": "1", "WORD": "a", "SPACE": " ", "NOT_DIGIT": "a", "NOT_WORD": "-", "NOT_SPACE": "a"}
_CATEGORY_SAMPLES = {f"CATEGORY_{name}": sample for name, sample in _CATEGORY_SAMPLES.items()}
MAX_PROBES = 16


def _characters(items: Any, found: dict[str, None]) -> None:
    """Characters that the pattern's parts match: the texts most likely to make it backtrack."""
    for op, value in items:
        if op == sre_parse.LITERAL:
            found.setdefault(chr(value), None)
        elif op == sre_parse.ANY:
            found.setdefault("a", None)
        elif op == sre_parse.IN:
            _characters(value, found)
        elif op == sre_parse.RANGE:
            found.setdefault(chr(value[0]), None)
        elif op == sre_parse.CATEGORY:
            found.setdefault(_CATEGORY_SAMPLES.get(str(value), "a"), None)
        elif op in _REPEATS:
            _characters(value[2], found)
        elif op == sre_parse.SUBPATTERN:
            _characters(value[-1], found)
        elif op == sre_parse.BRANCH:
            for branch in value[1]:
                _characters(branch, found)


def _probes(parsed: Any) -> list[str]:
    found: dict[str, None] = {}
    _characters(parsed, found)
    return [character * 64 + "\x00" for character in list(found)[:MAX_PROBES]]


@functools.lru_cache(maxsize=256)
def safe_pattern(pattern: str, ignore_case: bool = True) -> regex.Pattern[str]:
    """Compile an expected pattern, or raise ``UnsafePattern`` saying why it is refused."""
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_PATTERN_CHARS:
        raise UnsafePattern(f"expected 1 to {MAX_PATTERN_CHARS} characters")
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as exc:
        raise UnsafePattern(f"does not compile: {exc}") from None
    if _nested_repeat(parsed, inside_repeat=False):
        raise UnsafePattern(
            "nests a quantifier inside another, such as (a+)+: matching it can take exponential time; rewrite it "
            "without the outer repeat"
        )
    compiled = regex.compile(pattern, regex.IGNORECASE if ignore_case else 0)
    for probe in _probes(parsed):
        try:
            compiled.search(probe, timeout=REGEX_TIME_LIMIT_S)
        except TimeoutError:
            shown = probe[:12].replace("\x00", "\\0")
            raise UnsafePattern(
                f"takes longer than {REGEX_TIME_LIMIT_S:g} s on a {len(probe)}-character text ({shown!r}…): "
                "its alternatives or repeats overlap; rewrite it"
            ) from None
    return compiled


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str | None = None  # why it did not pass


@dataclass(frozen=True)
class Contains:
    """The guide's string: the answer contains it, ignoring case."""

    text: str

    def check(self, answer: str) -> Verdict:
        if self.text.lower() in answer.lower():
            return Verdict(True)
        return Verdict(False, f"the answer does not contain {self.text!r}")


@dataclass(frozen=True)
class AnyOf:
    """The guide's list: the answer contains one of them, ignoring case."""

    texts: tuple[str, ...]

    def check(self, answer: str) -> Verdict:
        if any(text.lower() in answer.lower() for text in self.texts):
            return Verdict(True)
        return Verdict(False, f"the answer contains none of {', '.join(map(repr, self.texts))}")


@dataclass(frozen=True)
class Matches:
    """The safe form of the guide's function: a regular expression found in the answer."""

    pattern: str
    ignore_case: bool = True

    def check(self, answer: str) -> Verdict:
        compiled = safe_pattern(self.pattern, self.ignore_case)
        try:
            found = compiled.search(answer, timeout=REGEX_TIME_LIMIT_S)
        except TimeoutError:
            return Verdict(False, f"the pattern took longer than {REGEX_TIME_LIMIT_S:g} s on this answer")
        return Verdict(True) if found else Verdict(False, f"the answer does not match /{self.pattern}/")


@dataclass(frozen=True)
class HasLabel:
    """A classification case: the best label is this one (ignoring case)."""

    label: str

    def check(self, answer: str) -> Verdict:
        if answer.lower() == self.label.lower():
            return Verdict(True)
        return Verdict(False, f"the label is {answer!r}, not {self.label!r}")


@dataclass(frozen=True)
class SimilarTo:
    """An embedding case: the input's vector is at least ``min_cosine`` from the reference text's."""

    reference: str
    min_cosine: float

    def check_vectors(self, vector: list[float], reference: list[float]) -> tuple[Verdict, float]:
        similarity = cosine(vector, reference)
        if similarity >= self.min_cosine:
            return Verdict(True), similarity
        return Verdict(False, f"cosine {similarity:.3f} is below {self.min_cosine:g}"), similarity


Expectation = Contains | AnyOf | Matches | HasLabel | SimilarTo


def cosine(a: list[float], b: list[float]) -> float:
    """The guide's cosineSimilarity."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norms if norms else 0.0
