"""The gateway's translation of Hugging Face Inference API calls is pure: which task a call asks for, what job
it makes, and the API's answer shapes."""

from __future__ import annotations

import re

import pytest

from llm_router.broker.catalogue import load_catalogue
from llm_router.gateway import inference_api_format as api
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.schemas import Classification, ClassifyResult, Embedding, EmbedResult, LabelScore, Usage

CATALOGUE = load_catalogue(None)  # the bundled one: fast generates, embeds and classifies
SMOL, MINILM = "HuggingFaceTB/SmolLM2-135M-Instruct", "sentence-transformers/all-MiniLM-L6-v2"
SENTIMENT = "llm-runner-router/minilm-sentiment"
# What huggingface_hub.InferenceClient looks for to drop the parameters a server does not use, and ask again.
MODEL_KWARGS_NOT_USED = re.compile(r"The following `model_kwargs` are not used by the model: \[(.*?)\]")


@pytest.mark.parametrize(
    ("path", "route"),
    [
        (MINILM, api.Route(MINILM)),
        (f"{MINILM}/pipeline/feature-extraction", api.Route(MINILM, "feature-extraction")),
        ("fast/pipeline/sentence-similarity/", api.Route("fast", "sentence-similarity")),
        (f"{SMOL}/v1/chat/completions", api.Route(SMOL, chat=True)),
        ("fast/chat/completions", api.Route("fast", chat=True)),
    ],
)
def test_a_path_names_a_model_or_tier_and_maybe_its_task(path: str, route: api.Route) -> None:
    assert api.Route.of(path) == route


def test_a_task_the_gateway_does_not_serve_is_refused_by_name() -> None:
    with pytest.raises(InvalidRequest, match="'image-to-text'") as refused:
        api.Route.of(f"{MINILM}/pipeline/image-to-text")
    assert refused.value.field == "task"


@pytest.mark.parametrize(
    ("path", "body", "task"),
    [
        (MINILM, {"inputs": "x"}, "feature-extraction"),
        (MINILM, {"inputs": {"source_sentence": "x", "sentences": ["y"]}}, "sentence-similarity"),
        (SENTIMENT, {"inputs": "x"}, "text-classification"),
        (SMOL, {"inputs": "x", "stream": False}, "text-generation"),
        ("fast", {"inputs": "x", "stream": False}, "text-generation"),
        ("fast/pipeline/text-classification", {"inputs": "x"}, "text-classification"),
    ],
)
def test_the_task_comes_from_the_route_the_payload_and_the_models_kinds(
    path: str, body: dict[str, object], task: str
) -> None:
    assert api.task_of(api.Route.of(path), body, CATALOGUE) == task


def test_a_tier_of_several_tasks_must_name_one() -> None:
    with pytest.raises(InvalidRequest, match="/models/fast/pipeline/") as refused:
        api.task_of(api.Route.of("fast"), {"inputs": "x"}, CATALOGUE)
    assert refused.value.field == "task"
    with pytest.raises(InvalidRequest, match="no-org/no-model"):
        api.task_of(api.Route.of("no-org/no-model"), {"inputs": "x"}, CATALOGUE)


def test_a_text_generation_call_maps_onto_a_generate_job() -> None:
    body = {
        "inputs": "Once",
        "parameters": {"max_new_tokens": 8, "stop": "\n", "do_sample": False, "top_k": None, "seed": 3},
        "stream": True,
    }
    assert api.generation_request(api.Route(SMOL), body, CATALOGUE) == {
        "kind": "generate",
        "prompt": "Once",
        "model": SMOL,
        "max_tokens": 8,
        "stop": ["\n"],
        "seed": 3,
        "temperature": 0.0,
        "stream": True,
    }


def test_unused_generation_parameters_are_refused_in_the_words_the_client_reads() -> None:
    body = {"inputs": "Once", "parameters": {"watermark": True, "typical_p": 0.5, "max_new_tokens": 4}}
    with pytest.raises(InvalidRequest) as refused:
        api.generation_request(api.Route(SMOL), body, CATALOGUE)
    found = MODEL_KWARGS_NOT_USED.search(str(refused.value))
    assert found is not None and [name.strip("' ") for name in found.group(1).split(",")] == ["typical_p", "watermark"]


def test_embedding_similarity_and_classification_calls_make_their_jobs() -> None:
    route = api.Route(MINILM)
    assert api.embedding_request(route, {"inputs": "x"}, CATALOGUE)["input"] == ["x"]
    similar = {"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}}
    assert api.similarity_request(route, similar, CATALOGUE)["input"] == ["a", "b", "c"]
    made = api.classification_request(api.Route("fast"), {"inputs": "x", "parameters": {"top_k": 1}}, CATALOGUE)
    assert made == {"kind": "classify", "input": ["x"], "tier": "fast"}
    for bad in ({"inputs": 3}, {"inputs": []}, {"inputs": "x", "parameters": {"normalize": False}}):
        with pytest.raises(InvalidRequest):
            api.embedding_request(route, bad, CATALOGUE)


def test_answers_come_in_the_apis_shapes() -> None:
    embedded = EmbedResult(
        model=MINILM,
        data=[
            Embedding(index=1, embedding=[0.0, 1.0]),
            Embedding(index=0, embedding=[1.0, 0.0]),
            Embedding(index=2, embedding=[1.0, 1.0]),
        ],
        usage=Usage.of(3),
    )
    assert api.vectors(embedded) == [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    assert api.similarities(embedded) == pytest.approx([0.0, 2**-0.5])
    ranked = [LabelScore(label="NEGATIVE", score=0.1), LabelScore(label="POSITIVE", score=0.9)]
    classified = ClassifyResult(model=SENTIMENT, labels=ranked, data=[Classification(index=0, labels=ranked)])
    assert api.labels(classified, None) == [[{"label": "POSITIVE", "score": 0.9}, {"label": "NEGATIVE", "score": 0.1}]]
    assert api.labels(classified, 1) == [[{"label": "POSITIVE", "score": 0.9}]]
    assert api.token_event(2, "", "whole")["token"]["special"] is True
    assert api.error_body("loading", 10.0) == {"error": "loading", "estimated_time": 10.0}
