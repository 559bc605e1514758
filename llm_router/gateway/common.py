"""What every route of the gateway shares: the caller's key, the router and the quota ledger of the app, and
how a job or a batch is admitted against the tenant's limits and submitted."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from llm_router.broker.async_client import AsyncJob, AsyncRouter
from llm_router.gateway.auth import caller
from llm_router.gateway.quotas import Quotas, estimate_tokens
from llm_router.tasks.store import ApiKeyView

MAX_WAIT_S = 300.0  # the longest a request waits for its job before it answers with where the job stands
Key = Annotated[ApiKeyView, Depends(caller)]
# A retried request with the same key gets the first one's job: no second job, no second reservation.
Keyed = Annotated[str | None, Header(alias="Idempotency-Key")]


def router_of(request: Request) -> AsyncRouter:
    router: AsyncRouter = request.app.state.router
    return router


def quotas_of(request: Request) -> Quotas:
    quotas: Quotas = request.app.state.quotas
    return quotas


async def submit_job(request: Request, key: ApiKeyView, body: dict[str, Any], idempotency_key: str | None) -> AsyncJob:
    """Admit and submit one job for the key's tenant: what it may spend is reserved first (429 when a limit
    refuses it, and nothing is submitted), given back if the submission fails, and settled once the job ends.
    A submission repeated with its idempotency key was admitted the first time: it reserves nothing more."""
    router = router_of(request)
    earlier = None
    if idempotency_key is not None:
        earlier = await asyncio.to_thread(router.sync.store.job_for_key, f"{key.tenant}/{idempotency_key}")
    reservation = None if earlier is not None else await quotas_of(request).admit(key, [body])
    keyed = {**body, "idempotency_key": idempotency_key} if idempotency_key is not None else body
    try:
        job = await router.submit(keyed, tenant=key.tenant)
    except BaseException:
        await quotas_of(request).release(reservation)
        raise
    await quotas_of(request).attach(reservation, f"job:{job.id}")
    return job


async def submit_batch(request: Request, key: ApiKeyView, requests: list[Any], **options: Any) -> Any:
    """Admit a batch whole (every line's tokens reserved at once, or 429 and nothing submitted) and submit it;
    what the refused lines would have spent is given back."""
    router, quotas = router_of(request), quotas_of(request)
    reservation = await quotas.admit(key, requests)
    try:
        submitted = await router.batch(requests, tenant=key.tenant, **options)
    except BaseException:
        await quotas.release(reservation)
        raise
    default = router.catalogue.defaults.max_tokens
    kept = sum(estimate_tokens(requests[position], default) for position in submitted.jobs)
    await quotas.attach(reservation, f"batch:{submitted.batch_id}", kept)
    return submitted


def sse(data: Any, event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
