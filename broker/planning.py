"""A request planned once, where it is first recorded: validated, routed (tier, queue, chain) and cache-keyed.

The job row keeps what planning decided (its tier and queue, its cache key, its tenant); a worker reads them
from the row and never routes the request again. Pure, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_router.broker.catalogue import Catalogue
from llm_router.broker.routing import AUTO, Route, queue_for_tier, route
from llm_router.tasks.cache import cache_key
from llm_router.tasks.schemas import ClassifyRequest, EmbedRequest, GenerateRequest
from llm_router.tasks.store import NewJob

Request = GenerateRequest | EmbedRequest | ClassifyRequest


@dataclass(frozen=True)
class Planned:
    """A valid request and where it goes."""

    request: Request
    route: Route
    cache_key: str
    tenant: str | None = None

    @property
    def stored(self) -> dict[str, Any]:
        """The request as the job row keeps it."""
        return self.request.model_dump(mode="json", exclude_none=True)

    def new_job(
        self, job_id: str, *, bulk: bool = False, idempotency_key: str | None = None, run_step: int | None = None
    ) -> NewJob:
        """The row that records this request as a queued job, in its tier's interactive or bulk lane."""
        queue = queue_for_tier(self.route.tier, "bulk") if bulk else self.route.queue
        return NewJob(
            job_id,
            self.request.kind,
            self.stored,
            self.route.tier,
            queue,
            self.cache_key,
            idempotency_key=idempotency_key,
            run_step=run_step,
            tenant=self.tenant,
        )


def plan(
    request: Request, catalogue: Catalogue, *, tenant: str | None = None, served: frozenset[str] | None = None
) -> Planned:
    """Route a parsed request and key it for the cache; raises ``InvalidRequest`` naming the field. ``served``
    (the queues some live worker consumes) narrows ``tier="auto"`` to the tiers served."""
    routed = route(request, catalogue, served if request.tier == AUTO else None)
    return Planned(request, routed, cache_key(request, routed.tier, tenant), tenant)
