"""Translating between the OpenAI API's JSON and our requests and results. Pure functions."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

from llm_router.broker.catalogue import Catalogue
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.schemas import EmbedResult, GenerateResult

# OpenAI fields that map onto ours; anything else we do not implement is refused by name, not ignored.
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop"}
_IGNORED = {"user", "metadata", "store"}  # about the caller, not the answer
# Fields we do not implement, accepted only at the value that asks for nothing (what the SDK may send).
_ONLY_DEFAULT: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}),
}


def _target(model: Any, catalogue: Catalogue) -> dict[str, str]:
    """A tier name works as a model name; otherwise it is a model of the catalogue."""
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: required, a model or tier name of GET /v1/models", field="model")
    return {"tier": model} if model in catalogue.tiers else {"model": model}


def _same(value: Any, default: Any) -> bool:
    """Equal, with a bool never equal to a number (``False == 0`` in Python, not in JSON)."""
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    return bool(value == default)


def _common(body: dict[str, Any], catalogue: Catalogue, known: set[str]) -> dict[str, Any]:
    handled = known | set(_SAMPLING) | _IGNORED | set(_ONLY_DEFAULT) | {"model", "stream", "stream_options"}
    unknown = sorted(set(body) - handled - {"n", "max_tokens"})
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: not supported by this gateway", field=unknown[0])
    for name, defaults in _ONLY_DEFAULT.items():
        value = body.get(name)
        if not any(_same(value, default) for default in defaults):
            raise InvalidRequest(f"{name}: not supported by this gateway (leave it out)", field=name)
    if body.get("n", 1) != 1 or isinstance(body.get("n"), bool):
        raise InvalidRequest("n: only 1 is supported", field="n")
    request: dict[str, Any] = {"kind": "generate", **_target(body.get("model"), catalogue)}
    for theirs, ours in _SAMPLING.items():
        if body.get(theirs) is not None:
            request[ours] = [body[theirs]] if theirs == "stop" and isinstance(body[theirs], str) else body[theirs]
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is not None:
        request["max_tokens"] = tokens
    return request


def chat_request(body: dict[str, Any], catalogue: Catalogue) -> dict[str, Any]:
    request = _common(body, catalogue, {"messages", "max_completion_tokens"})
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages: required, a list of {role, content}", field="messages")
    request["messages"] = [
        {"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m for m in messages
    ]
    request["stream"] = _stream(body)
    return request


def _stream(body: dict[str, Any]) -> bool:
    value = body.get("stream")
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"stream: true or false (got {type(value).__name__})", field="stream")
    return value


def include_usage(body: dict[str, Any]) -> bool:
    """``stream_options.include_usage``: a streamed answer ends with a chunk that carries the usage."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidRequest('stream_options: an object such as {"include_usage": true}', field="stream_options")
    if options and not body.get("stream"):
        raise InvalidRequest("stream_options: only with stream: true", field="stream_options")
    unknown = sorted(set(options) - {"include_usage"})
    if unknown:
        raise InvalidRequest(f"stream_options.{unknown[0]}: not supported by this gateway", field="stream_options")
    value = options.get("include_usage", False)
    if not isinstance(value, bool):
        raise InvalidRequest("stream_options.include_usage: true or false", field="stream_options")
    return value


def completion_request(body: dict[str, Any], catalogue: Catalogue) -> dict[str, Any]:
    request = _common(body, catalogue, {"prompt"})
    request["prompt"] = body.get("prompt")
    request["stream"] = _stream(body)
    return request


def embedding_request(body: dict[str, Any], catalogue: Catalogue) -> dict[str, Any]:
    unknown = sorted(set(body) - {"model", "input", "encoding_format", "user", "dimensions"})
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: not supported by this gateway", field=unknown[0])
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise InvalidRequest("encoding_format: 'float' or 'base64'", field="encoding_format")
    if body.get("dimensions") is not None:
        raise InvalidRequest("dimensions: not supported (the model's own size is returned)", field="dimensions")
    return {"kind": "embed", "input": body.get("input"), **_target(body.get("model"), catalogue)}


def _usage(result: GenerateResult | EmbedResult) -> dict[str, int]:
    usage = result.usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def chat_completion(job_id: str, result: GenerateResult, created: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": created,
        "model": result.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": _usage(result),
    }


def completion(job_id: str, result: GenerateResult, created: int) -> dict[str, Any]:
    return {
        "id": f"cmpl-{job_id}",
        "object": "text_completion",
        "created": created,
        "model": result.model,
        "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": _usage(result),
    }


def chat_chunk(
    job_id: str, model: str, created: int, delta: dict[str, str], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_chunk(job_id: str, model: str, created: int, usage: dict[str, Any], *, chat: bool) -> dict[str, Any]:
    """The last chunk of a stream asked for with ``stream_options.include_usage``: no choices, the usage."""
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{job_id}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [],
        "usage": {name: int(usage.get(name) or 0) for name in ("prompt_tokens", "completion_tokens", "total_tokens")},
    }


def completion_chunk(job_id: str, model: str, created: int, text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": f"cmpl-{job_id}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }


def _base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the vector's little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings(result: EmbedResult, encoding_format: str = "float") -> dict[str, Any]:
    encode = _base64 if encoding_format == "base64" else (lambda vector: vector)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": item.index, "embedding": encode(item.embedding)} for item in result.data
        ],
        "model": result.model,
        "usage": {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.total_tokens},
    }


def models(catalogue: Catalogue) -> dict[str, Any]:
    """The catalogue's tiers (usable as model names) and models."""
    names = [*catalogue.ordered_tiers, *catalogue.models_of_tiers(list(catalogue.ordered_tiers))]
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": 0, "owned_by": "llm-runner-router"} for name in names],
    }


def now() -> int:
    return int(time.time())
