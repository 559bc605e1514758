"""The gateway's translation of OpenAI requests and answers is pure."""

from __future__ import annotations

import base64
import struct

import pytest

from llm_router.broker.catalogue import load_catalogue
from llm_router.gateway import openai_format
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.schemas import Embedding, EmbedResult, Usage

CATALOGUE = load_catalogue(None)


def test_a_chat_request_maps_onto_a_generate_job() -> None:
    body = {
        "model": "fast",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 12,
        "temperature": 0.5,
        "stop": "\n",
        "stream": True,
        "user": "someone",  # accepted and not used
    }
    assert openai_format.chat_request(body, CATALOGUE) == {
        "kind": "generate",
        "tier": "fast",  # a tier name works as a model name
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 12,
        "temperature": 0.5,
        "stop": ["\n"],
        "stream": True,
    }
    named = openai_format.chat_request({**body, "model": "HuggingFaceTB/SmolLM2-135M-Instruct"}, CATALOGUE)
    assert named["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "tier" not in named


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "fast", "messages": [], "tools": []}, "tools"),
        ({"model": "fast", "messages": [], "n": 3}, "n"),
        ({"messages": []}, "model"),
        ({"model": "fast"}, "messages"),
    ],
)
def test_what_the_gateway_does_not_do_is_refused_by_name(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        openai_format.chat_request(body, CATALOGUE)
    assert raised.value.field == field


def test_embeddings_come_as_floats_or_as_openais_base64() -> None:
    result = EmbedResult(model="m", data=[Embedding(index=0, embedding=[0.5, -1.25])], usage=Usage.of(2))
    assert openai_format.embeddings(result)["data"][0]["embedding"] == [0.5, -1.25]
    packed = openai_format.embeddings(result, "base64")["data"][0]["embedding"]
    assert list(struct.unpack("<2f", base64.b64decode(packed))) == [0.5, -1.25]
    assert openai_format.embeddings(result)["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
