"""What the remote pool is measured against: the same chat calls to the same stand-in from clients that keep
nothing (no record, no retry, no limit), each run in this process, as many at a time as the pool's slots.

Each returns calls/s, the whole machine's CPU milliseconds per call (every process: the client, the stand-in,
and anything else running), and the p50 and p95 of a call's latency. aiohttp, httpx over aiohttp's transport
and LiteLLM (a bench-only dependency: ``pip install litellm``; the others come with the project): a row whose library
is missing says so instead of a figure."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

CHAT_PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hello"}]
TICKS = os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent outside idle and I/O wait since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / TICKS


def quantile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def figures(n: int, seconds: float, cpu_s: float, latencies: list[float]) -> dict[str, float]:
    return {
        "calls": n,
        "seconds": seconds,
        "per_s": n / seconds,
        "cpu_ms_per_call": cpu_s * 1000.0 / n,
        "p50_ms": quantile(latencies, 0.5) * 1000.0,
        "p95_ms": quantile(latencies, 0.95) * 1000.0,
        "mean_ms": statistics.fmean(latencies) * 1000.0 if latencies else float("nan"),
    }


async def _timed(n: int, at_once: int, call: Callable[[], Awaitable[None]]) -> dict[str, float]:
    slots = asyncio.Semaphore(at_once)
    latencies: list[float] = []

    async def one() -> None:
        async with slots:
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)

    cpu, started = machine_cpu_s(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    seconds = time.perf_counter() - started
    return figures(n, seconds, machine_cpu_s() - cpu, latencies)


def _body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "max_tokens": 10}


async def httpx_client(url: str, model: str, n: int, at_once: int) -> dict[str, float]:
    """One ``httpx.AsyncClient`` on its default transport (httpcore's pool)."""
    limits = httpx.Limits(max_connections=at_once, max_keepalive_connections=at_once)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def call() -> None:
            (await client.post(f"{url}{CHAT_PATH}", json=_body(model))).raise_for_status()

        return await _timed(n, at_once, call)


async def httpx_on_aiohttp(url: str, model: str, n: int, at_once: int) -> dict[str, float]:
    """httpx's API over aiohttp's transport (the ``httpx-aiohttp`` package, which the OpenAI SDK offers)."""
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    connector = lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=at_once))  # noqa: E731
    async with httpx.AsyncClient(transport=AiohttpTransport(client=connector), timeout=120) as client:

        async def call() -> None:
            (await client.post(f"{url}{CHAT_PATH}", json=_body(model))).raise_for_status()

        return await _timed(n, at_once, call)


async def aiohttp_client(url: str, model: str, n: int, at_once: int) -> dict[str, float]:
    """A bare aiohttp session: the cost of a call with nothing kept."""
    import aiohttp

    body = json.dumps(_body(model))
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=at_once)) as session:

        async def call() -> None:
            async with session.post(f"{url}{CHAT_PATH}", data=body, headers=headers) as reply:
                reply.raise_for_status()
                await reply.read()

        return await _timed(n, at_once, call)


async def litellm_router(url: str, model: str, n: int, at_once: int) -> dict[str, float]:
    """LiteLLM's ``Router.acompletion`` against the stand-in as an OpenAI-compatible server."""
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    router = litellm.Router(
        model_list=[
            {
                "model_name": "stand-in",
                "litellm_params": {"model": f"openai/{model}", "api_base": f"{url}/v1", "api_key": "none"},
            }
        ],
        num_retries=0,
    )

    async def call() -> None:
        await router.acompletion(model="stand-in", messages=MESSAGES, max_tokens=10)

    return await _timed(n, at_once, call)


CLIENTS: dict[str, Callable[[str, str, int, int], Awaitable[dict[str, float]]]] = {
    "bare aiohttp": aiohttp_client,
    "httpx.AsyncClient (default transport)": httpx_client,
    "httpx over aiohttp (httpx-aiohttp)": httpx_on_aiohttp,
    "LiteLLM Router.acompletion": litellm_router,
}


def measure(name: str, url: str, model: str, n: int, at_once: int) -> dict[str, Any]:
    """One client's figures, or why there are none (a missing library)."""
    try:
        return asyncio.run(CLIENTS[name](url, model, n, at_once))
    except ImportError as exc:
        return {"skipped": f"not installed: {exc.name}"}
