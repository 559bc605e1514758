"""Pipelines: a declared list of steps, each a job whose request is built from the input text and what the
steps before it answered. Declared in the catalogue (``[pipelines.NAME]``); pure, no I/O.

The built-in ``reply`` pipeline is the guide's ``processText``: classify the text, generate a reply in the tone
its sentiment calls for (``POSITIVE`` → enthusiastic and helpful, ``NEGATIVE`` → empathetic and supportive,
``NEUTRAL`` → informative and balanced, any other → helpful) with the guide's prompt, and embed the reply.

A template may name ``{text}`` (the pipeline's input), ``{label}`` (the best label of the latest classify step),
``{tone}`` (that label's tone) and ``{STEP}``, the answer of an earlier generate or classify step by its name.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from llm_router.tasks.schemas import Kind

StepName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Template = Annotated[str, StringConstraints(min_length=1, max_length=8_000)]
GUIDE_PROMPT = 'Respond to the following message in a {tone} way:\n\n"{text}"\n\nResponse:'
GUIDE_TONES = {
    "POSITIVE": "enthusiastic and helpful",
    "NEGATIVE": "empathetic and supportive",
    "NEUTRAL": "informative and balanced",
}
BUILT_IN = ("text", "label", "tone")


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StepName
    kind: Literal["generate", "embed", "classify"]
    model: str | None = None
    tier: str | None = None
    prompt: Template | None = None  # generate
    input: Template | None = None  # embed, classify
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None

    @model_validator(mode="after")
    def _template_of_its_kind(self) -> StepSpec:
        if self.kind == "generate" and (self.prompt is None or self.input is not None):
            raise ValueError(f"step {self.name!r}: a generate step has a 'prompt' template (and no 'input')")
        if self.kind != "generate" and (self.input is None or self.prompt is not None):
            raise ValueError(
                f"step {self.name!r}: a step of kind {self.kind} has an 'input' template (and no 'prompt')"
            )
        return self

    @property
    def template(self) -> str:
        return self.prompt if self.kind == "generate" else self.input  # type: ignore[return-value]


def template_names(template: str) -> list[str]:
    """The names a template refers to; raises ValueError on a malformed one or on attribute/index access."""
    names = []
    for _, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise ValueError(f"{{{field}}}: a template names a value, nothing more (no '.', '[', ':' or '!')")
        names.append(field)
    return names


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: Annotated[list[StepSpec], Field(min_length=1, max_length=16)]
    tones: dict[str, str] = GUIDE_TONES
    default_tone: str = "helpful"

    @model_validator(mode="after")
    def _templates_name_what_exists(self) -> PipelineSpec:
        seen: dict[str, Kind] = {}
        for step in self.steps:
            if step.name in seen or step.name in BUILT_IN:
                raise ValueError(f"step {step.name!r}: each step needs a name of its own (not text, label or tone)")
            try:
                names = template_names(step.template)
            except ValueError as exc:
                raise ValueError(f"step {step.name!r}: {exc}") from None
            for name in names:
                if name in ("label", "tone") and "classify" not in seen.values():
                    raise ValueError(f"step {step.name!r}: {{{name}}} needs a classify step before it")
                if name not in BUILT_IN and seen.get(name) not in ("generate", "classify"):
                    known = ", ".join([*BUILT_IN, *(n for n, k in seen.items() if k != "embed")])
                    raise ValueError(f"step {step.name!r}: {{{name}}} is not one of {known}")
            seen[step.name] = step.kind
        return self


def guide_pipeline() -> PipelineSpec:
    """The guide's ``processText``, on the catalogue's default tier."""
    return PipelineSpec(
        steps=[
            StepSpec(name="sentiment", kind="classify", input="{text}"),
            StepSpec(name="reply", kind="generate", prompt=GUIDE_PROMPT, max_tokens=150, temperature=0.7),
            StepSpec(name="embedding", kind="embed", input="{reply}"),
        ]
    )


@dataclass(frozen=True)
class StepAnswer:
    """What a step answered, as later templates and the pipeline's result use it."""

    name: str
    kind: str
    text: str | None = None  # generate: the text; classify: the best label
    vector: list[float] | None = None  # embed: the first vector


def step_answer(name: str, kind: str, result: dict[str, Any]) -> StepAnswer:
    if kind == "generate":
        return StepAnswer(name, kind, text=str(result.get("text", "")))
    if kind == "classify":
        labels = result.get("labels") or [{}]
        return StepAnswer(name, kind, text=str(labels[0].get("label", "")))
    data = result.get("data") or [{}]
    return StepAnswer(name, kind, vector=list(data[0].get("embedding") or []))


def step_request(spec: PipelineSpec, index: int, text: str, answers: list[StepAnswer]) -> dict[str, Any]:
    """The job request of step ``index``, from the input text and the answers of the steps before it."""
    step = spec.steps[index]
    values: dict[str, str] = {"text": text}
    for answer in answers[:index]:
        if answer.text is not None:
            values[answer.name] = answer.text
        if answer.kind == "classify":
            values["label"] = answer.text or ""
            values["tone"] = spec.tones.get(values["label"], spec.default_tone)
    filled = step.template.format_map(values)
    request: dict[str, Any] = {"kind": step.kind, "model": step.model, "tier": step.tier}
    if step.kind == "generate":
        request.update(prompt=filled, max_tokens=step.max_tokens, temperature=step.temperature)
    else:
        request["input"] = filled
    return {name: value for name, value in request.items() if value is not None}


def tone_of(spec: PipelineSpec, answers: list[StepAnswer]) -> str | None:
    labels = [answer.text for answer in answers if answer.kind == "classify"]
    return spec.tones.get(labels[-1] or "", spec.default_tone) if labels else None
