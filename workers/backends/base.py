"""The tiny interface every backend implements: one call per job kind, our schemas in and out; and the
calls that run many requests of one kind at once, which a backend declares by having them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from llm_router.broker.catalogue import GenerationDefaults
from llm_router.tasks.schemas import (
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    Kind,
)

if TYPE_CHECKING:
    from llm_router.workers.backends.http import HttpCaller
    from llm_router.workers.backends.remote import Planned


Request = GenerateRequest | EmbedRequest | ClassifyRequest
Result = GenerateResult | EmbedResult | ClassifyResult


class Backend(Protocol):
    provider: str

    def generate(self, model_id: str, request: GenerateRequest, defaults: GenerationDefaults) -> GenerateResult: ...

    def embed(self, model_id: str, request: EmbedRequest) -> EmbedResult: ...

    def classify(self, model_id: str, request: ClassifyRequest) -> ClassifyResult: ...


@runtime_checkable
class PlansCalls(Protocol):
    """A remote backend: the HTTP calls that answer requests of one kind, planned for any caller to send (the
    event loop's): a generation's call of its own, the inputs of embed and classify requests packed into few.
    A request that takes more than one plain call (a stream, more inputs than a call takes) is in none."""

    @property
    def caller(self) -> HttpCaller: ...

    def plan(self, model_id: str, requests: Sequence[Request], defaults: GenerationDefaults) -> list[Planned]: ...


@runtime_checkable
class GeneratesMany(Protocol):
    def generate_many(
        self, model_id: str, requests: list[GenerateRequest], defaults: GenerationDefaults
    ) -> list[GenerateResult]: ...


@runtime_checkable
class EmbedsMany(Protocol):
    def embed_many(self, model_id: str, requests: list[EmbedRequest]) -> list[EmbedResult]: ...


@runtime_checkable
class ClassifiesMany(Protocol):
    def classify_many(self, model_id: str, requests: list[ClassifyRequest]) -> list[ClassifyResult]: ...


# Requests of one kind in, one result per request out, in order.
ManyCall = Callable[[str, list[Any]], Sequence[GenerateResult | EmbedResult | ClassifyResult]]


def many_call(backend: Backend, kind: Kind, defaults: GenerationDefaults) -> ManyCall | None:
    """The backend's call that runs many requests of ``kind`` at once; None when it has none."""
    if kind == "generate" and isinstance(backend, GeneratesMany):
        generates = backend
        return lambda model_id, requests: generates.generate_many(model_id, requests, defaults)
    if kind == "embed" and isinstance(backend, EmbedsMany):
        return backend.embed_many
    if kind == "classify" and isinstance(backend, ClassifiesMany):
        return backend.classify_many
    return None
