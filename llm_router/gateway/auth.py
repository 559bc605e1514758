"""Who calls: ``Authorization: Bearer <key>`` names a live API key and so a tenant. Whether the tenant may
submit work now is ``quotas``'s: limits apply to work admitted, never to reads."""

from __future__ import annotations

import asyncio

from fastapi import Request

from llm_router.gateway.errors import ApiError
from llm_router.tasks.store import ApiKeyView, JobStore


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
    return found
