"""Who calls: ``Authorization: Bearer <key>`` names a live API key and so a tenant; and whether the tenant
may call now: its requests and tokens per minute (cluster-wide, in Redis) and its token budget."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis
from fastapi import Request

from broker.gateway.errors import ApiError
from tasks.store import ApiKeyView, JobStore

WINDOW_S = 60


async def caller(request: Request) -> ApiKeyView:
    """The key of the request, or 401: missing, malformed, unknown or revoked are told apart only in words."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError("unauthorised", "missing API key: send Authorization: Bearer <key>")
    store: JobStore = request.app.state.store
    found = await asyncio.to_thread(store.key_for, key.strip())
    if found is None:
        raise ApiError("unauthorised", "invalid or revoked API key")
    await request.app.state.quotas.admit(found)
    return found


class Quotas:
    """Per-tenant limits. Requests per minute count in a Redis window shared by every gateway process (in
    this process alone without Redis); tokens per minute and the budget are summed from the usage rows."""

    def __init__(self, store: JobStore, redis_url: str | None):
        self.store = store
        self.redis = aioredis.Redis.from_url(redis_url) if redis_url else None
        self._local: dict[str, int] = defaultdict(int)

    async def admit(self, key: ApiKeyView) -> None:
        now = time.time()
        window = int(now // WINDOW_S)
        retry_after = str(max(1, int((window + 1) * WINDOW_S - now) + 1))
        if key.requests_per_minute is not None:
            name = f"llm-router:tenant-rpm:{key.tenant}:{window}"
            if self.redis is not None:
                pipe = self.redis.pipeline(transaction=False)
                pipe.incr(name)
                pipe.expire(name, WINDOW_S * 2)
                count = int((await pipe.execute())[0])
            else:
                self._local[name] += 1
                count = self._local[name]
            if count > key.requests_per_minute:
                raise ApiError(
                    "rate_limited",
                    f"tenant {key.tenant} is over its {key.requests_per_minute} requests per minute",
                    headers={"Retry-After": retry_after},
                )
        if key.tokens_per_minute is not None:
            since = datetime.now(UTC) - timedelta(seconds=WINDOW_S)
            used = await asyncio.to_thread(self.store.tenant_tokens, key.tenant, since)
            if used >= key.tokens_per_minute:
                raise ApiError(
                    "rate_limited",
                    f"tenant {key.tenant} used {used} of its {key.tokens_per_minute} tokens per minute",
                    headers={"Retry-After": str(WINDOW_S)},
                )
        if key.budget_tokens is not None:
            used = await asyncio.to_thread(self.store.tenant_tokens, key.tenant)
            if used >= key.budget_tokens:
                raise ApiError("rate_limited", f"tenant {key.tenant} has used its budget of {key.budget_tokens} tokens")

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
