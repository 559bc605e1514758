"""A stand-in API for load benchmarks: one asyncio process on 127.0.0.1 that answers OpenAI-compatible
completions after a fixed delay and TEI embeddings within TEI's limits, with thousands of connections open.

The threaded test server (tests/support/inference_server.py) scripts replies call by call; under hundreds of
concurrent connections its threads and the interpreter lock become the limit, so benchmarks use this one.

    POST /v1/completions, /v1/chat/completions
                           after ``delay_s``; a share of calls answers 503 or 429 when failures are on
    POST /embed            at most ``tei_per_call`` inputs (413 beyond, as TEI), ``tei_at_once`` calls at a
                           time, each after ``tei_call_s``
    POST /control          {"failing": bool, "reset": bool}
    GET  /stats            calls per path, inputs per /embed call, replies per status, per-second call counts,
                           and when each completion call arrived
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

CHAT = "/v1/chat/completions"
COMPLETIONS = ("/v1/completions", CHAT)


@dataclass
class Behaviour:
    delay_s: float = 0.5
    tei_per_call: int = 32
    tei_call_s: float = 0.020
    tei_at_once: int = 4
    loading_share: float = 0.10  # 503 while failing
    limited_share: float = 0.05  # 429 while failing


@dataclass
class State:
    failing: bool = False
    calls: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    embed_sizes: list[int] = field(default_factory=list)
    per_second: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    completion_arrivals: list[float] = field(default_factory=list)


class StandIn:
    def __init__(self, behaviour: Behaviour):
        self.behaviour, self.state = behaviour, State()
        self.random = random.Random(7)
        self.tei_slots: asyncio.Semaphore | None = None

    async def handle(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        state, behaviour = self.state, self.behaviour
        if path == "/stats":
            return 200, self.stats(), {}
        if path == "/control":
            if body.get("reset"):
                self.state = State(failing=bool(body.get("failing", False)))
            else:
                state.failing = bool(body.get("failing", state.failing))
            return 200, {"ok": True}, {}
        state.calls[path] += 1
        state.per_second[int(time.time())] += 1
        if path in COMPLETIONS:
            state.completion_arrivals.append(time.time())
            await asyncio.sleep(behaviour.delay_s)
            if state.failing:
                draw = self.random.random()
                if draw < behaviour.loading_share:
                    return 503, {"error": "Model is currently loading", "estimated_time": 1.0}, {}
                if draw < behaviour.loading_share + behaviour.limited_share:
                    return 429, {"error": "Rate limit reached"}, {"Retry-After": "1"}
            return 200, _chat(body) if path == CHAT else _completion(body), {}
        if path == "/embed":
            inputs = list(body.get("inputs") or [])
            state.embed_sizes.append(len(inputs))
            if len(inputs) > behaviour.tei_per_call:
                return 413, {"error": f"batch size {len(inputs)} > max_client_batch_size"}, {}
            assert self.tei_slots is not None
            async with self.tei_slots:
                await asyncio.sleep(behaviour.tei_call_s)
            return 200, [[float(len(text)), 1.0, 0.5] for text in inputs], {}
        return 404, {"error": f"no route {path}"}, {}

    def stats(self) -> dict[str, Any]:
        state = self.state
        return {
            "calls": dict(state.calls),
            "statuses": {str(k): v for k, v in state.statuses.items()},
            "embed_sizes": state.embed_sizes,
            "busiest_second": max(state.per_second.values(), default=0),
            "completion_arrivals": state.completion_arrivals,
        }

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                status, reply, extra = await self.handle(method, path, json.loads(raw) if raw else {})
                self.state.statuses[status] += 1
                payload = json.dumps(reply).encode()
                header = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                header += "".join(f"{k}: {v}\r\n" for k, v in extra.items()) + "\r\n"
                writer.write(header.encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def run(self, ready: Any) -> None:
        self.tei_slots = asyncio.Semaphore(self.behaviour.tei_at_once)
        server = await asyncio.start_server(self.serve_connection, "127.0.0.1", 0, backlog=4096)
        ready.put(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        async with server:
            await server.serve_forever()


def _main(behaviour: Behaviour, ready: Any) -> None:
    asyncio.run(StandIn(behaviour).run(ready))


def _chat(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "There was a queue."}, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9},
    }


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": body.get("model"),
        "choices": [{"index": 0, "text": " there was a queue.", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9},
    }


def start(behaviour: Behaviour) -> tuple[multiprocessing.process.BaseProcess, str]:
    """The stand-in in a process of its own (it must not share an interpreter lock with the client)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    process = context.Process(target=_main, args=(behaviour, ready), daemon=True)
    process.start()
    return process, ready.get(timeout=30)
