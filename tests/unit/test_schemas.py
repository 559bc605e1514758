"""Request validation: every limit is enforced and every error names the field and the limit."""

from __future__ import annotations

import pytest

from llm_router.tasks import limits
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.schemas import ClassifyRequest, EmbedRequest, GenerateRequest, parse_request

BAD = [
    # (request, words the error must contain)
    ({"kind": "generate", "prompt": ""}, ["prompt", "at least 1 character"]),  # empty prompt
    ({"kind": "generate", "prompt": "   "}, ["prompt", "empty"]),  # whitespace is empty too
    ({"kind": "generate", "prompt": 123}, ["prompt", "valid string"]),  # wrong type, no coercion
    ({"kind": "generate", "prompt": "hi", "max_tokens": "50"}, ["max_tokens", "valid integer"]),  # no str→int
    ({"kind": "generate", "prompt": "hi", "max_tokens": limits.MAX_TOKENS_CAP + 1}, ["max_tokens", "2048"]),
    ({"kind": "generate", "prompt": "hi", "max_tokens": 0}, ["max_tokens", "greater than or equal to 1"]),
    ({"kind": "generate", "prompt": "x" * (limits.MAX_PROMPT_CHARS + 1)}, ["prompt", "32000"]),  # oversize
    ({"kind": "generate", "prompt": "hi", "temperature": 2.5}, ["temperature", "2"]),
    ({"kind": "generate", "prompt": "hi", "temperature": float("nan")}, ["temperature", "finite"]),
    ({"kind": "generate", "prompt": "hi", "top_p": 0}, ["top_p", "greater than 0"]),
    ({"kind": "generate", "prompt": "a\x00b"}, ["prompt", "NUL"]),  # Postgres cannot store NUL
    ({"kind": "generate"}, ["prompt", "messages"]),  # neither prompt nor messages
    ({"kind": "generate", "prompt": "a", "messages": [{"role": "user", "content": "b"}]}, ["exactly one"]),
    ({"kind": "generate", "messages": [{"role": "robot", "content": "b"}]}, ["messages.0.role"]),
    ({"kind": "generate", "prompt": "hi", "bogus": 1}, ["bogus", "not permitted"]),  # unknown field
    ({"kind": "generate", "prompt": "hi", "model": "../../etc/passwd"}, ["model", "pattern"]),
    ({"kind": "embed", "input": []}, ["input", "at least 1"]),
    ({"kind": "embed", "input": ["a"] * (limits.MAX_INPUTS + 1)}, ["input", "256"]),  # too many inputs
    ({"kind": "embed", "input": ["x" * (limits.MAX_INPUT_CHARS + 1)]}, ["input.0", "8192"]),
    ({"kind": "classify", "input": [1, 2]}, ["input.0", "valid string"]),
    ({"kind": "summarise", "input": "x"}, ["kind", "summarise", "generate, embed, classify"]),  # unknown kind
    ("not a dict", ["request", "JSON object"]),
]


@pytest.mark.parametrize(("request_data", "words"), BAD)
def test_bad_requests_name_the_field_and_limit(request_data: object, words: list[str]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(request_data)
    message = str(caught.value)
    for word in words:
        assert word in message, f"{word!r} missing from {message!r}"


def test_good_requests_parse_to_their_kind() -> None:
    assert isinstance(parse_request({"kind": "generate", "prompt": "Hello", "max_tokens": 5}), GenerateRequest)
    embed = parse_request({"kind": "embed", "input": "one text"})
    assert isinstance(embed, EmbedRequest) and embed.input == ["one text"]
    assert isinstance(parse_request({"kind": "classify", "input": ["a", "b"]}), ClassifyRequest)


def test_temperature_accepts_an_integer() -> None:
    request = parse_request({"kind": "generate", "prompt": "hi", "temperature": 1})
    assert isinstance(request, GenerateRequest) and request.temperature == 1.0


def test_prompt_chars_counts_messages() -> None:
    request = GenerateRequest(messages=[{"role": "user", "content": "abc"}, {"role": "assistant", "content": "de"}])
    assert request.prompt_chars == 5
