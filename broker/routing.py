"""Routing a validated request to a tier, its queue and its ordered model chain. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llm_router.broker.catalogue import Catalogue
from llm_router.tasks.errors import ConfigurationError, InvalidRequest
from llm_router.tasks.schemas import ClassifyRequest, EmbedRequest, GenerateRequest, Kind

AUTO = "auto"
# The seed's selectOptimalModel thresholds: (prompt characters, max_tokens) strictly below → tier index.
AUTO_THRESHOLDS = ((100, 100), (500, 300))


@dataclass(frozen=True)
class Route:
    tier: str
    queue: str
    chain: tuple[str, ...]


Lane = Literal["interactive", "bulk"]
BULK_SUFFIX = ".bulk"


def queue_for_tier(tier: str, lane: Lane = "interactive") -> str:
    """A tier has two queues: ``fast`` for interactive jobs and ``fast.bulk`` for batch jobs, which
    workers take only when no interactive job of their tiers waits."""
    return tier if lane == "interactive" else f"{tier}{BULK_SUFFIX}"


def lane_of(queue: str | None) -> Lane:
    return "bulk" if queue is not None and queue.endswith(BULK_SUFFIX) else "interactive"


def auto_tier(prompt_chars: int, max_tokens: int, catalogue: Catalogue) -> str:
    order = catalogue.ordered_tiers
    for index, (chars_below, tokens_below) in enumerate(AUTO_THRESHOLDS):
        if prompt_chars < chars_below and max_tokens < tokens_below:
            return order[min(index, len(order) - 1)]
    return order[min(len(AUTO_THRESHOLDS), len(order) - 1)]


def _request_size(request: GenerateRequest | EmbedRequest | ClassifyRequest, catalogue: Catalogue) -> tuple[int, int]:
    if isinstance(request, GenerateRequest):
        return request.prompt_chars, request.max_tokens or catalogue.defaults.max_tokens
    return sum(len(text) for text in request.input), 0


def nearest_served_tier(tier: str, kind: Kind, catalogue: Catalogue, served: frozenset[str]) -> str:
    """``tier``, or when no live worker consumes either of its lanes, the nearest tier in the catalogue's order
    that one does (the faster one when two are as near); ``tier`` itself when none is served."""
    order = [name for name in catalogue.ordered_tiers if catalogue.tiers[name].chain(kind)]
    if tier not in order:
        return tier
    at = order.index(tier)
    for candidate in sorted(order, key=lambda name: (abs(order.index(name) - at), order.index(name))):
        if served & {queue_for_tier(candidate), queue_for_tier(candidate, "bulk")}:
            return candidate
    return tier


def route(
    request: GenerateRequest | EmbedRequest | ClassifyRequest,
    catalogue: Catalogue,
    served: frozenset[str] | None = None,
) -> Route:
    """Where a request goes. Raises ``InvalidRequest`` naming the field for unknown tiers or models. With
    ``served`` (the queues some live worker consumes), ``tier="auto"`` picks only among the tiers served."""
    kind = request.kind
    tier = request.tier or (None if request.model else catalogue.default_tier)
    if tier == AUTO:
        tier = auto_tier(*_request_size(request, catalogue), catalogue)
        if served is not None:
            tier = nearest_served_tier(tier, kind, catalogue, served)
    if tier is not None and tier not in catalogue.tiers:
        known = ", ".join([*catalogue.ordered_tiers, AUTO])
        raise InvalidRequest(f"tier: unknown tier {tier!r}; expected one of {known}", field="tier")

    if request.model is not None:
        serving = catalogue.tiers_serving(request.model, kind)
        if not serving:
            listed = sorted({m for name in catalogue.ordered_tiers for m in catalogue.tiers[name].chain(kind)})
            raise InvalidRequest(
                f"model: unknown model {request.model!r} for {kind}; the catalogue lists {', '.join(listed) or 'none'}",
                field="model",
            )
        if tier is None:
            tier = serving[0]
        elif tier not in serving:
            raise InvalidRequest(
                f"model: {request.model!r} is not in tier {tier!r}; it is served by {', '.join(serving)}",
                field="model",
            )
        return Route(tier=tier, queue=queue_for_tier(tier), chain=(request.model,))

    assert tier is not None
    chain = tuple(catalogue.tiers[tier].chain(kind))
    if not chain:
        raise InvalidRequest(f"tier: tier {tier!r} has no models for {kind} jobs", field="tier")
    return Route(tier=tier, queue=queue_for_tier(tier), chain=chain)


def chain_now(
    request: GenerateRequest | EmbedRequest | ClassifyRequest, tier: str, catalogue: Catalogue, *, moved: bool
) -> Route:
    """The chain of a job recorded in ``tier``, read from the catalogue the worker runs with now: the model the
    job named, or its tier's chain; after a tier fallback (``moved``), the new tier's own chain (a model the
    job named belongs to the tier it was routed to first). Raises ``ConfigurationError`` when the catalogue no
    longer has that tier or model (the job then fails with the cause)."""
    if tier not in catalogue.tiers:
        raise ConfigurationError(
            f"tier {tier!r} is no longer in the catalogue; known: {', '.join(catalogue.ordered_tiers)}"
        )
    if request.model is not None and not moved:
        if request.model not in catalogue.models:
            raise ConfigurationError(f"model {request.model!r} is no longer in the catalogue")
        return Route(tier=tier, queue=queue_for_tier(tier), chain=(request.model,))
    chain = tuple(catalogue.tiers[tier].chain(request.kind))
    if not chain:
        raise ConfigurationError(f"tier {tier!r} no longer has models for {request.kind} jobs")
    return Route(tier=tier, queue=queue_for_tier(tier), chain=chain)
