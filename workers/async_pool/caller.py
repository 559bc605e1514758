"""Sending planned HTTP calls (``PlannedCall``) on an event loop: httpx's API over aiohttp's transport.

httpx's own async pool walks every pooled connection on each request and on each response's close: at
hundreds of calls in flight that bookkeeping costs more CPU than the rest of a job (encode/httpx#3215);
aiohttp's connector does not. ``ops/bench/remote.py`` measures both against a bare aiohttp client.
"""

from __future__ import annotations

from typing import TypeVar

import httpx
from httpx_aiohttp import AiohttpTransport

from llm_router.workers.backends.http import HttpCaller, PlannedCall

T = TypeVar("T")


class AsyncCaller:
    """One client for all the calls of a process's loop, keeping up to ``connections`` connections."""

    def __init__(self, timeout_s: float, connections: int):
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.client = httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits),
            # A call waiting for a free connection waits as long as the calls ahead of it may take.
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s), pool=None),
            follow_redirects=False,
        )

    async def run(self, caller: HttpCaller, planned: PlannedCall[T]) -> T:
        """Send ``planned`` with ``caller``'s tokens; our errors for every failure, as the threads' caller raises.
        A cancelled call closes its connection at once."""
        headers = caller.headers(planned.model_id, planned.headers)
        with caller.network_errors(planned.model_id):
            response = await self.client.post(planned.url, json=planned.payload, headers=headers)
        return planned.answer(caller.body_of(response, planned.model_id))

    async def close(self) -> None:
        await self.client.aclose()
