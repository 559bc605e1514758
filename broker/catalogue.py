"""The tier catalogue: which models each tier runs for each job kind, where, and with what defaults.

Loaded from TOML (``LLM_ROUTER_CONFIG``) or the built-in ``catalogue.toml``; a bad file fails at start
with the file, the key and the reason.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llm_router.broker.pipelines import PipelineSpec, guide_pipeline
from llm_router.tasks.errors import ConfigurationError
from llm_router.tasks.schemas import Kind

Provider = Literal["local", "hf-inference", "openai", "tei", "echo"]
Pool = Literal["cpu", "gpu", "remote"]  # remote: models behind HTTP APIs, called from a threads pool


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerationDefaults(_Frozen):
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    max_tokens: Annotated[int, Field(ge=1)] = 200
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.9
    top_k: Annotated[int, Field(ge=0)] = 50
    repetition_penalty: Annotated[float, Field(gt=0)] = 1.1


class ModelSpec(_Frozen):
    provider: Provider = "local"
    task: Kind | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    path: Path | None = None
    base_url: str | None = None  # remote providers: the endpoint (hf-inference defaults to HUGGINGFACE_BASE_URL)
    api_key_env: str | None = None  # remote providers: the variable holding this model's key, instead of HF's
    # Remote providers: the most embed or classify inputs one HTTP call carries (None: the provider's default,
    # 32 for TEI and hf-inference, as TEI's max_client_batch_size; 2048 for OpenAI-compatible servers).
    max_inputs_per_call: Annotated[int, Field(ge=1, le=100_000)] | None = None


# Limits a moving window can count: beyond these a limit means "none" and would only overflow the store.
PerMinute = Annotated[int, Field(ge=1, le=1_000_000)]
PerHour = Annotated[int, Field(ge=1, le=60_000_000)]


class ProviderSpec(_Frozen):
    """Limits of a remote provider, per API key, across every tier that uses it."""

    requests_per_minute: PerMinute | None = None
    requests_per_hour: PerHour | None = None


class TierSpec(_Frozen):
    pool: Pool = "cpu"
    requests_per_minute: PerMinute | None = None
    requests_per_hour: PerHour | None = None
    generate: list[str] = []
    embed: list[str] = []
    classify: list[str] = []

    def chain(self, kind: Kind) -> list[str]:
        return list(getattr(self, kind))


class Catalogue(_Frozen):
    default_tier: str = "fast"
    tier_order: list[str] = ["fast", "balanced", "quality"]
    defaults: GenerationDefaults = GenerationDefaults()
    tiers: dict[str, TierSpec]
    models: dict[str, ModelSpec] = {}
    providers: dict[Provider, ProviderSpec] = {}
    downgrades: dict[str, str] | None = None  # model → smaller model tried while it loads (503); None: the seed's
    # Named pipelines; "reply" (the guide's processText) is there unless the catalogue declares its own.
    pipelines: dict[str, PipelineSpec] = {}

    @model_validator(mode="after")
    def _consistent(self) -> Catalogue:
        if not self.tiers:
            raise ValueError("tiers: at least one tier is required")
        repeated = sorted({name for name in self.tier_order if self.tier_order.count(name) > 1})
        if repeated:
            # A tier named twice would escalate into itself: a failing job would loop forever.
            raise ValueError(f"tier_order: names {', '.join(map(repr, repeated))} more than once; each tier once")
        for name in self.tier_order:
            if name not in self.tiers:
                raise ValueError(f"tier_order: names tier {name!r}, which [tiers] does not define")
        if self.default_tier != "auto" and self.default_tier not in self.tiers:
            raise ValueError(f"default_tier: {self.default_tier!r} is not a tier")
        for name, pipeline in self.pipelines.items():
            for step in pipeline.steps:
                self._check_step(f"pipelines.{name}.{step.name}", step.kind, step.model, step.tier)
        return self

    def _check_step(self, where: str, kind: Kind, model: str | None, tier: str | None) -> None:
        if tier is not None and tier not in self.tiers:
            raise ValueError(f"{where}: tier {tier!r} is not a tier")
        if model is not None and not self.tiers_serving(model, kind):
            raise ValueError(f"{where}: no tier runs {model!r} for {kind} jobs")

    @property
    def all_pipelines(self) -> dict[str, PipelineSpec]:
        """The declared pipelines, and the guide's as "reply" unless one of them has that name."""
        return {"reply": guide_pipeline(), **self.pipelines}

    @property
    def ordered_tiers(self) -> list[str]:
        """Tiers in escalation order: ``tier_order`` first, then any others as declared."""
        return self.tier_order + [name for name in self.tiers if name not in self.tier_order]

    def model_spec(self, model_id: str) -> ModelSpec:
        return self.models.get(model_id, ModelSpec())

    def tiers_serving(self, model_id: str, kind: Kind) -> list[str]:
        return [name for name in self.ordered_tiers if model_id in self.tiers[name].chain(kind)]

    def tiers_using(self, model_id: str) -> list[str]:
        """Tiers that run ``model_id`` for any kind of job."""
        return [name for name in self.ordered_tiers if model_id in self.models_of_tiers([name])]

    def next_tier(self, tier: str, kind: Kind) -> str | None:
        """The tier a job escalates to after ``tier``: the next in order that has models for ``kind``."""
        order = self.ordered_tiers
        for name in order[order.index(tier) + 1 :] if tier in order else []:
            if self.tiers[name].chain(kind):
                return name
        return None

    def tiers_of_pool(self, pool: Pool) -> list[str]:
        return [name for name in self.ordered_tiers if self.tiers[name].pool == pool]

    def models_of_tiers(self, tiers: list[str]) -> list[str]:
        seen: dict[str, None] = {}
        for name in tiers:
            tier = self.tiers[name]
            for model_id in (*tier.generate, *tier.embed, *tier.classify):
                seen.setdefault(model_id, None)
        return list(seen)


def _location(error: object) -> str:
    loc = getattr(error, "get", lambda _k, _d=None: ())("loc", ())
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_catalogue(text: str, source: str) -> Catalogue:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source}: not valid TOML: {exc}") from None
    try:
        return Catalogue.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_location(e)}: {e['msg']}" for e in exc.errors(include_url=False))
        raise ConfigurationError(f"{source}: {problems}") from None


def load_catalogue(path: Path | None) -> Catalogue:
    """The catalogue at ``path``, or the built-in one when ``path`` is None."""
    if path is None:
        text = resources.files("llm_router.broker").joinpath("catalogue.toml").read_text(encoding="utf-8")
        return parse_catalogue(text, "built-in catalogue")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the catalogue: {exc.strerror}") from None
    return parse_catalogue(text, str(path))
