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
        ({"model": "fast", "messages": [], "logprobs": True}, "logprobs"),
        ({"model": "fast", "messages": [], "logprobs": 0}, "logprobs"),  # JSON's 0 is not false
        ({"model": "fast", "messages": [], "presence_penalty": 0.5}, "presence_penalty"),
        ({"model": "fast", "messages": [], "frequency_penalty": 1}, "frequency_penalty"),
        ({"model": "fast", "messages": [], "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": []}, "model"),
        ({"model": "fast"}, "messages"),
    ],
)
def test_what_the_gateway_does_not_do_is_refused_by_name(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        openai_format.chat_request(body, CATALOGUE)
    assert raised.value.field == field


def test_fields_at_the_value_that_asks_for_nothing_are_accepted() -> None:
    body = {
        "model": "fast",
        "messages": [{"role": "user", "content": "Hi"}],
        "logprobs": False,
        "presence_penalty": 0.0,
        "frequency_penalty": 0,
        "response_format": {"type": "text"},
        "metadata": {"team": "search"},
    }
    assert openai_format.chat_request(body, CATALOGUE)["messages"] == body["messages"]


@pytest.mark.parametrize(
    ("body", "included"),
    [
        ({"stream": True}, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
        ({"stream": True, "stream_options": {}}, False),
        ({"stream": False, "stream_options": {"include_usage": True}}, InvalidRequest),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, InvalidRequest),
        ({"stream": True, "stream_options": {"continuous_usage_stats": True}}, InvalidRequest),
        ({"stream": True, "stream_options": True}, InvalidRequest),
    ],
)
def test_stream_options_ask_for_the_usage_chunk_and_nothing_else(body: dict[str, object], included: object) -> None:
    if included is InvalidRequest:
        with pytest.raises(InvalidRequest) as raised:
            openai_format.include_usage(body)
        assert raised.value.field == "stream_options"
    else:
        assert openai_format.include_usage(body) is included


def test_the_usage_chunk_has_no_choices_and_the_usage() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    chunk = openai_format.usage_chunk("j1", "m/a", 7, usage, chat=True)
    assert chunk["choices"] == [] and chunk["usage"] == usage and chunk["model"] == "m/a"
    assert chunk["object"] == "chat.completion.chunk" and chunk["id"] == "chatcmpl-j1"


def test_embeddings_come_as_floats_or_as_openais_base64() -> None:
    result = EmbedResult(model="m", data=[Embedding(index=0, embedding=[0.5, -1.25])], usage=Usage.of(2))
    assert openai_format.embeddings(result)["data"][0]["embedding"] == [0.5, -1.25]
    packed = openai_format.embeddings(result, "base64")["data"][0]["embedding"]
    assert list(struct.unpack("<2f", base64.b64decode(packed))) == [0.5, -1.25]
    assert openai_format.embeddings(result)["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
