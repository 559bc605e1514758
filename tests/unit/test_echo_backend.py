"""The echo provider answers every kind at once, in the result shapes of a real model."""

from __future__ import annotations

from llm_router.broker.catalogue import GenerationDefaults
from llm_router.tasks.schemas import ClassifyRequest, EmbedRequest, GenerateRequest
from llm_router.workers.backends.echo import DIMENSIONS, EchoBackend


def test_echo_answers_every_kind_with_real_shapes() -> None:
    backend = EchoBackend()
    generated = backend.generate("echo", GenerateRequest(prompt="say it back"), GenerationDefaults())
    assert generated.text == "say it back" and generated.usage.total_tokens == 6
    first, second = backend.embed_many("echo", [EmbedRequest(input=["a", "b c"]), EmbedRequest(input="a")])
    assert [len(item.embedding) for item in first.data] == [DIMENSIONS, DIMENSIONS]
    assert (
        first.data[0].embedding == second.data[0].embedding != first.data[1].embedding
    )  # the same text, the same vector
    assert (first.usage.total_tokens, second.usage.total_tokens) == (3, 1)
    classified = backend.classify("echo", ClassifyRequest(input=["x", "y"]))
    assert [item.labels[0].label for item in classified.data] == ["ECHO", "ECHO"]
