"""Who calls: ``Authorization: Bearer <key>`` names a live API key and so a tenant. Whether the tenant may
submit work now is ``quotas``'s: limits apply to work admitted, never to reads."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llm_router.gateway.errors import ApiError
from llm_router.tasks.store import ApiKeyView, JobStore

# Declared as HTTP bearer auth, so that the OpenAPI document says which routes need a key; the 401 is ours.
BEARER = HTTPBearer(auto_error=False, description="An API key of `llm-router keys create`")


async def caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
) -> ApiKeyView:
    """The key of the request, or 401: missing, malformed, unknown or revoked are told apart only in words."""
    key = credentials.credentials if credentials is not None else ""
    if not key.strip():
        raise ApiError("unauthorised", "missing API key: send Authorization: Bearer <key>")
    store: JobStore = request.app.state.store
    found = await asyncio.to_thread(store.key_for, key.strip())
    if found is None:
        raise ApiError("unauthorised", "invalid or revoked API key")
    return found
