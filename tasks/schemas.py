"""Request and result schemas: the edge where untrusted input becomes typed data.

Requests are strict (no silent coercion, no unknown fields, no NaN) and every limit lives in
``llm_router.tasks.limits`` so that the error text names the field and the limit it broke.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeAlias
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from llm_router.tasks import limits
from llm_router.tasks.errors import InvalidRequest

Kind: TypeAlias = Literal["generate", "embed", "classify"]
KINDS: tuple[Kind, ...] = ("generate", "embed", "classify")
FallbackMode: TypeAlias = Literal["tier", "model", "none"]

ModelId = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=limits.MAX_MODEL_ID_CHARS,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)?$",
    ),
]
TierName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _no_nul(value: str) -> str:
    # Postgres text cannot hold NUL, and no model wants terminal control codes: refuse them here (tab,
    # newline and carriage return are text) rather than fail on write or feed escape sequences to logs.
    found = _CONTROL.search(value)
    if found:
        kind = "NUL characters" if found.group() == "\x00" else "control characters"
        raise ValueError(f"must not contain {kind} (found U+{ord(found.group()):04X} at {found.start()})")
    return value


def web_address(value: str) -> str:
    """An absolute http(s) URL with a host and no credentials (they would be stored and logged with it)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@); the body is signed instead")
    if any(char.isspace() for char in value) or _CONTROL.search(value):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        raise ValueError(f"has a bad port ({exc})") from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class JobOptions(_Strict):
    """What every job may say about where and how it runs."""

    model: ModelId | None = None
    tier: TierName | None = None
    fallback: FallbackMode = "tier"
    use_cache: bool = True
    batch_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    # Seconds from submission within which the job must start; past them it ends "expired" without running.
    deadline_s: Annotated[float, Field(gt=0, le=limits.MAX_DEADLINE_S)] | None = None
    # Order within the interactive lane: a job of higher priority is taken before queued jobs of lower.
    priority: Annotated[int, Field(ge=0, le=limits.MAX_PRIORITY)] | None = None
    # Where the worker POSTs the job's final record (signed); see broker.webhooks.
    callback_url: Annotated[str, StringConstraints(max_length=limits.MAX_CALLBACK_URL_CHARS)] | None = None
    # Set by Router.batch on the jobs of a batch with a callback: the job that ends the batch sends it.
    batch_callback: bool = False

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        return None if value is None else web_address(value)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, StringConstraints(max_length=limits.MAX_MESSAGE_CHARS)]

    _check_content = field_validator("content")(_no_nul)


class GenerateRequest(JobOptions):
    kind: Literal["generate"] = "generate"
    stream: bool = False  # publish the text's deltas as they are made (Job.stream)
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_PROMPT_CHARS)] | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=limits.MAX_MESSAGES)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=limits.MAX_TOKENS_CAP)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0, le=1000)] | None = None
    repetition_penalty: Annotated[float, Field(ge=0.5, le=2.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    stop: (
        Annotated[
            list[Annotated[str, StringConstraints(min_length=1, max_length=64)]],
            Field(max_length=limits.MAX_STOP_SEQUENCES),
        ]
        | None
    ) = None

    @field_validator("prompt")
    @classmethod
    def _prompt_text(cls, value: str | None) -> str | None:
        return None if value is None else _not_blank(_no_nul(value))

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self

    @property
    def prompt_chars(self) -> int:
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(m.content) for m in self.messages or [])


def _input_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


InputText = Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_INPUT_CHARS)]


class _TextsRequest(JobOptions):
    input: Annotated[list[InputText], Field(min_length=1, max_length=limits.MAX_INPUTS)]

    @field_validator("input", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _input_list(value)

    @field_validator("input")
    @classmethod
    def _texts(cls, value: list[str]) -> list[str]:
        for text in value:
            _not_blank(_no_nul(text))
        return value


class EmbedRequest(_TextsRequest):
    kind: Literal["embed"] = "embed"


class ClassifyRequest(_TextsRequest):
    kind: Literal["classify"] = "classify"


JobRequest: TypeAlias = Annotated[GenerateRequest | EmbedRequest | ClassifyRequest, Field(discriminator="kind")]
REQUEST_TYPES: dict[Kind, type[GenerateRequest | EmbedRequest | ClassifyRequest]] = {
    "generate": GenerateRequest,
    "embed": EmbedRequest,
    "classify": ClassifyRequest,
}
_ANY_REQUEST: TypeAdapter[GenerateRequest | EmbedRequest | ClassifyRequest] = TypeAdapter(JobRequest)


def _describe(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "request"
    message = error["msg"]
    given = error.get("input")
    if isinstance(given, (int, float, bool)) or (isinstance(given, str) and len(given) <= 40):
        return f"{field}: {message} (got {given!r})"
    if isinstance(given, (str, list)):
        return f"{field}: {message} (got {type(given).__name__} of length {len(given)})"
    return f"{field}: {message}"


def invalid_request(kind: str, exc: ValidationError) -> InvalidRequest:
    problems = [_describe(error) for error in exc.errors(include_url=False)]
    first_field = ".".join(str(p) for p in exc.errors()[0]["loc"]) if exc.errors() else None
    return InvalidRequest(f"invalid {kind} request: " + "; ".join(problems), field=first_field, problems=problems)


def parse_request(data: Any) -> GenerateRequest | EmbedRequest | ClassifyRequest:
    """Validate a request of any kind (a dict with ``kind``), raising ``InvalidRequest``."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"invalid request: expected a JSON object, got {type(data).__name__}", field="request")
    kind = data.get("kind")
    if kind not in REQUEST_TYPES:
        raise InvalidRequest(f"kind: unknown job kind {kind!r}; expected one of {', '.join(KINDS)}", field="kind")
    try:
        return REQUEST_TYPES[kind].model_validate(data)
    except ValidationError as exc:
        raise invalid_request(kind, exc) from None


# ---- results ---------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False  # counted by a rough rule, not a tokenizer or the server

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int = 0, *, estimated: bool = False) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            estimated=estimated,
        )


class _Result(BaseModel):
    model: str
    tier: str | None = None
    cached: bool = False


class GenerateResult(_Result):
    kind: Literal["generate"] = "generate"
    text: str
    usage: Usage
    finish_reason: Literal["stop", "length"] = "length"


class Embedding(BaseModel):
    index: int
    embedding: list[float]


class EmbedResult(_Result):
    kind: Literal["embed"] = "embed"
    data: list[Embedding]
    usage: Usage


class LabelScore(BaseModel):
    label: str
    score: float


class Classification(BaseModel):
    index: int
    labels: list[LabelScore]


class ClassifyResult(_Result):
    """``labels`` are the first input's (best first), as the seed returns; ``data`` holds every input's."""

    kind: Literal["classify"] = "classify"
    labels: list[LabelScore]
    data: list[Classification]
    usage: Usage = Usage()


JobResult: TypeAlias = Annotated[GenerateResult | EmbedResult | ClassifyResult, Field(discriminator="kind")]
_ANY_RESULT: TypeAdapter[GenerateResult | EmbedResult | ClassifyResult] = TypeAdapter(JobResult)


def parse_result(data: dict[str, Any]) -> GenerateResult | EmbedResult | ClassifyResult:
    return _ANY_RESULT.validate_python(data)
