"""Pipeline steps as pure decisions: the guide's tone map and prompt, templates filled from earlier answers."""

from __future__ import annotations

import pytest

from llm_router.broker.pipelines import GUIDE_PROMPT, StepAnswer, guide_pipeline, step_request, template_names, tone_of


@pytest.mark.parametrize(
    ("label", "tone"),
    [
        ("POSITIVE", "enthusiastic and helpful"),
        ("NEGATIVE", "empathetic and supportive"),
        ("NEUTRAL", "informative and balanced"),
        ("LABEL_7", "helpful"),  # the guide's fallback for any other label
    ],
)
def test_the_guides_tone_map(label: str, tone: str) -> None:
    spec = guide_pipeline()
    answers = [StepAnswer("sentiment", "classify", text=label)]
    assert tone_of(spec, answers) == tone
    request = step_request(spec, 1, 'He said "hi" {not a field}', answers)
    assert request["prompt"] == GUIDE_PROMPT.format(tone=tone, text='He said "hi" {not a field}')
    assert (request["kind"], request["max_tokens"], request["temperature"]) == ("generate", 150, 0.7)


def test_each_step_takes_the_answers_before_it() -> None:
    spec = guide_pipeline()
    assert step_request(spec, 0, "text", []) == {"kind": "classify", "input": "text"}
    answers = [StepAnswer("sentiment", "classify", text="POSITIVE"), StepAnswer("reply", "generate", text="Great!")]
    assert step_request(spec, 2, "text", answers) == {"kind": "embed", "input": "Great!"}


@pytest.mark.parametrize(
    ("template", "names"),
    [("{text}", ["text"]), ("a {mood} b {text}", ["mood", "text"]), ("{{literal}} {tone}", ["tone"]), ("none", [])],
)
def test_template_names(template: str, names: list[str]) -> None:
    assert template_names(template) == names


@pytest.mark.parametrize("template", ["{text.__class__}", "{text[0]}", "{text!r}", "{text:>10}", "{0}", "{"])
def test_templates_name_values_only(template: str) -> None:
    with pytest.raises(ValueError):
        template_names(template)
