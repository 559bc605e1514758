"""The tiny interface every backend implements: one call per job kind, our schemas in and out."""

from __future__ import annotations

from typing import Protocol

from broker.catalogue import GenerationDefaults
from tasks.schemas import (
    ClassifyRequest,
    ClassifyResult,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
)


class Backend(Protocol):
    provider: str

    def generate(self, model_id: str, request: GenerateRequest, defaults: GenerationDefaults) -> GenerateResult: ...

    def embed(self, model_id: str, request: EmbedRequest) -> EmbedResult: ...

    def classify(self, model_id: str, request: ClassifyRequest) -> ClassifyResult: ...
