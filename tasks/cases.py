"""Evaluation cases: what a case file may say, read from YAML or JSON Lines into typed cases. Pure, no I/O.

A case has a name, a ``kind`` (generate by default), a prompt or messages (generate) or an input text (embed,
classify), optional ``max_tokens`` and ``temperature``, and what it expects:

    expected: "4"                                   the answer contains it (ignoring case)
    expected: ["hello", "hi"]                       the answer contains one of them
    expected: {regex: "^\\d+$", ignore_case: false} the pattern is found in the answer (checked when read)
    expected: {label: POSITIVE}                     classify: the best label
    expected: {similar_to: "text", min_cosine: 0.6} embed: the cosine to the reference text's vector

A YAML file holds a list of cases or ``{cases: [...]}``; a JSON Lines file holds one case per line.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.expectations import (
    AnyOf,
    Contains,
    Expectation,
    HasLabel,
    Matches,
    SimilarTo,
    UnsafePattern,
    safe_pattern,
)
from llm_router.tasks.schemas import invalid_request

MAX_CASES = 10_000
MAX_CASE_FILE_BYTES = 16 * 2**20
Text = Annotated[str, StringConstraints(min_length=1, max_length=32_000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PatternExpected(_Strict):
    regex: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    ignore_case: bool = True


class LabelExpected(_Strict):
    label: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class SimilarExpected(_Strict):
    similar_to: Text
    min_cosine: Annotated[float, Field(ge=-1.0, le=1.0)]


Expected = (
    str | list[Annotated[str, StringConstraints(min_length=1)]] | PatternExpected | LabelExpected | SimilarExpected
)


class CaseSpec(_Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    kind: Literal["generate", "embed", "classify"] = "generate"
    prompt: Text | None = None
    messages: list[dict[str, Any]] | None = None
    input: Text | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    expected: Expected | None = None

    @model_validator(mode="after")
    def _fits_its_kind(self) -> CaseSpec:
        if self.kind == "generate":
            if (self.prompt is None) == (self.messages is None):
                raise ValueError("a generate case gives exactly one of 'prompt' or 'messages'")
            if isinstance(self.expected, (LabelExpected, SimilarExpected)):
                raise ValueError("expected: a generate case expects text (a string, a list or a regex)")
        else:
            if self.input is None or self.prompt is not None or self.messages is not None:
                raise ValueError(f"a {self.kind} case gives 'input' (and no prompt or messages)")
            if self.kind == "embed" and not isinstance(self.expected, SimilarExpected):
                raise ValueError("expected: an embed case expects {similar_to: TEXT, min_cosine: X}")
            if self.kind == "classify" and isinstance(self.expected, SimilarExpected):
                raise ValueError("expected: a classify case expects a label")
        if isinstance(self.expected, list) and not self.expected:
            raise ValueError("expected: a list of alternatives holds at least one")
        return self


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    request: dict[str, Any]  # the job's fields, without model, tier or kind
    expectation: Expectation | None

    @property
    def reference(self) -> str | None:
        """An embed case's reference text, embedded in the same job as its input."""
        return self.expectation.reference if isinstance(self.expectation, SimilarTo) else None


def _expectation(expected: Expected | None) -> Expectation | None:
    if expected is None:
        return None
    if isinstance(expected, str):
        return Contains(expected)
    if isinstance(expected, list):
        return AnyOf(tuple(expected))
    if isinstance(expected, PatternExpected):
        safe_pattern(expected.regex, expected.ignore_case)  # refused here, before anything runs
        return Matches(expected.regex, expected.ignore_case)
    if isinstance(expected, LabelExpected):
        return HasLabel(expected.label)
    return SimilarTo(expected.similar_to, expected.min_cosine)


def _case(spec: CaseSpec) -> Case:
    request: dict[str, Any] = {}
    if spec.kind == "generate":
        # The guide's defaults: 100 new tokens at temperature 0.7 (a temperature of 0 is kept, not replaced).
        request = {
            "prompt": spec.prompt,
            "messages": spec.messages,
            "max_tokens": 100 if spec.max_tokens is None else spec.max_tokens,
            "temperature": 0.7 if spec.temperature is None else spec.temperature,
        }
    else:
        request = {"input": [spec.input]}
    expectation = _expectation(spec.expected)
    if isinstance(expectation, SimilarTo):
        request["input"] = [spec.input, expectation.reference]
    return Case(spec.name, spec.kind, {k: v for k, v in request.items() if v is not None}, expectation)


def _entries(text: str, fmt: Literal["yaml", "jsonl"], source: str) -> list[Any]:
    if fmt == "jsonl":
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"{source}: line {number} is not JSON ({exc.msg})", field="cases") from None
        return entries
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InvalidRequest(f"{source}: not valid YAML{where}: {problem}", field="cases") from None
    if isinstance(data, dict) and set(data) == {"cases"}:
        data = data["cases"]
    if not isinstance(data, list):
        raise InvalidRequest(f"{source}: expected a list of cases (or 'cases:' holding one)", field="cases")
    return data


def parse_cases(text: str, fmt: Literal["yaml", "jsonl"], source: str = "cases") -> list[Case]:
    """The cases of a file's text; raises ``InvalidRequest`` naming the file, the case and the problem."""
    entries = _entries(text, fmt, source)
    if not entries:
        raise InvalidRequest(f"{source}: holds no case", field="cases")
    if len(entries) > MAX_CASES:
        raise InvalidRequest(f"{source}: at most {MAX_CASES} cases (got {len(entries)})", field="cases")
    cases: list[Case] = []
    for number, entry in enumerate(entries, 1):
        label = f"{source}: case {number}" + (
            f" ({entry['name']!r})" if isinstance(entry, dict) and "name" in entry else ""
        )
        if not isinstance(entry, dict):
            raise InvalidRequest(f"{label}: expected a mapping of fields, got {type(entry).__name__}", field="cases")
        try:
            cases.append(_case(CaseSpec.model_validate(entry)))
        except ValidationError as exc:
            raise InvalidRequest(f"{label}: {invalid_request('case', exc)}", field="cases") from None
        except UnsafePattern as exc:
            raise InvalidRequest(f"{label}: expected.regex {exc}", field="cases") from None
    repeated = sorted(name for name, times in Counter(case.name for case in cases).items() if times > 1)
    if repeated:
        raise InvalidRequest(
            f"{source}: case names must differ; {', '.join(map(repr, repeated))} repeated", field="cases"
        )
    return cases
