"""Whether a tenant may submit work now: its requests per minute, its tokens per minute and its token budget,
kept across every gateway process.

Tokens are reserved when work is admitted, not counted once it is done: a request reserves what it may spend
(its prompt's estimate and its ``max_tokens``; every line of a batch), atomically with the check, so a batch of
200 generations or 30 chats at once cannot pass a limit that only finished work would have shown. A request
the reservation does not fit is refused (429) with how much is left, and nothing is submitted. When the job
(or every job of a batch) ends, its reservation is settled against what it really used, from its usage rows
(cancelled and failed jobs give back what they did not spend), by a reconciler each gateway process runs (one
at a time, by a lock). The counters live in Redis, so every gateway process sees one figure, and checking them
costs one round trip however long the tenant's history: the budget's counter is read from the usage rows once,
then kept with the reservations, and made again from the rows in the background while nothing is in flight.
Without Redis they are this process's own.

Limits apply to work admitted, never to reads: a tenant past its budget still reads its jobs and usage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import redis.asyncio as aioredis

from llm_router.gateway.errors import ApiError
from llm_router.tasks.store import ApiKeyView, JobStore

log = logging.getLogger(__name__)

WINDOW_S = 60
SETTLE_EVERY_S = 1.0
RECOUNT_EVERY_S = 60.0
BYTES_PER_TOKEN = 4  # an estimate for prompts; what a job really used replaces it when it ends
TOKENS_PER_MESSAGE, TOKENS_PER_CHAT = 8, 32  # a chat template's markers and its default system prompt
TOKENS_PER_INPUT = 2  # an embedded or classified text's special tokens


def estimate_tokens(request: Any, default_max_tokens: int) -> int:
    """What a request may spend: its prompt's tokens, estimated from its bytes, and the most it may make. A
    request of no known shape is estimated at nothing (validation refuses it)."""
    if not isinstance(request, dict):
        return 0

    def text_tokens(value: Any) -> int:
        return math.ceil(len(value.encode()) / BYTES_PER_TOKEN) if isinstance(value, str) else 0

    if request.get("kind", "generate") != "generate":
        inputs = request.get("input")
        texts = inputs if isinstance(inputs, list) else [inputs]
        return sum(text_tokens(text) + TOKENS_PER_INPUT for text in texts)
    messages = request.get("messages")
    if isinstance(messages, list):
        prompt = TOKENS_PER_CHAT + sum(
            TOKENS_PER_MESSAGE + text_tokens(m.get("content")) for m in messages if isinstance(m, dict)
        )
    else:
        prompt = text_tokens(request.get("prompt"))
    most = request.get("max_tokens")
    return prompt + (most if isinstance(most, int) and not isinstance(most, bool) and most > 0 else default_max_tokens)


@dataclass(frozen=True)
class Reservation:
    tenant: str
    amount: int
    window: int  # the minute it counts in, for the tokens-per-minute limit


@dataclass(frozen=True)
class Refusal:
    limit: str  # "budget" or "tpm"
    left: int


class Ledger(Protocol):
    """Where reservations are kept: in Redis for every gateway process, or in this process alone."""

    async def reserve(
        self, tenant: str, amount: int, window: int, budget: int | None, tpm: int | None, used_before: Any
    ) -> Refusal | None: ...

    async def attach(self, reservation: Reservation, subject: str, amount: int) -> None: ...

    async def release(self, reservation: Reservation) -> None: ...

    async def outstanding(self) -> dict[str, dict[str, tuple[int, int]]]: ...

    async def settle(self, tenant: str, subject: str, used: int) -> None: ...

    async def recount(self, tenant: str, used_from_rows: Any) -> None: ...

    async def count_request(self, tenant: str, window: int) -> int: ...

    async def aclose(self) -> None: ...


class Quotas:
    """Per-tenant limits over a ledger; ``run`` settles and recounts in the background."""

    def __init__(self, store: JobStore, redis_url: str | None, default_max_tokens: int):
        self.store, self.default_max_tokens = store, default_max_tokens
        self.ledger: Ledger = RedisLedger(redis_url) if redis_url else LocalLedger()
        self.budgeted: set[str] = set()  # tenants with a budget seen by this process: recounted in the background

    async def admit(self, key: ApiKeyView, requests: list[Any]) -> Reservation | None:
        """Admit a submission of ``requests`` (one, or a batch's lines) for the key's tenant, reserving what
        they may spend; raises 429 (``ApiError``) when a limit refuses it, reserving nothing."""
        now = time.time()
        window = int(now // WINDOW_S)
        if key.requests_per_minute is not None:
            count = await self.ledger.count_request(key.tenant, window)
            if count > key.requests_per_minute:
                raise ApiError(
                    "rate_limited",
                    f"tenant {key.tenant} is over its {key.requests_per_minute} requests per minute",
                    headers={"Retry-After": _next_window_s(window, now)},
                )
        if key.tokens_per_minute is None and key.budget_tokens is None:
            return None
        amount = sum(estimate_tokens(request, self.default_max_tokens) for request in requests)
        if key.budget_tokens is not None:
            self.budgeted.add(key.tenant)
        refusal = await self.ledger.reserve(
            key.tenant,
            amount,
            window,
            key.budget_tokens,
            key.tokens_per_minute,
            lambda: asyncio.to_thread(self.store.tenant_tokens, key.tenant),
        )
        if refusal is None:
            return Reservation(key.tenant, amount, window)
        if refusal.limit == "budget":
            raise ApiError(
                "rate_limited",
                f"tenant {key.tenant} has {max(0, refusal.left):,} of its {key.budget_tokens:,} budget tokens left; "
                f"this request may spend {amount:,}",
            )
        raise ApiError(
            "rate_limited",
            f"tenant {key.tenant} may spend {max(0, refusal.left):,} more of its {key.tokens_per_minute:,} tokens "
            f"this minute; this request may spend {amount:,}",
            headers={"Retry-After": _next_window_s(window, now)},
        )

    async def attach(self, reservation: Reservation | None, subject: str, amount: int | None = None) -> None:
        """Tie a reservation to the job or batch it was for (``amount``: what of it stays reserved, when some of
        the requests were refused), to be settled once that ends."""
        if reservation is not None:
            await self.ledger.attach(reservation, subject, reservation.amount if amount is None else amount)

    async def release(self, reservation: Reservation | None) -> None:
        """Give back a reservation whose work was not submitted."""
        if reservation is not None:
            await self.ledger.release(reservation)

    async def settle_ended(self) -> int:
        """Settle the reservations whose jobs or batches ended, against their usage rows; how many."""
        settled = 0
        for tenant, subjects in (await self.ledger.outstanding()).items():
            ended = await asyncio.to_thread(self.store.ended_usage, list(subjects))
            for subject, used in ended.items():
                await self.ledger.settle(tenant, subject, used)
                settled += 1
        return settled

    async def recount(self) -> None:
        """Make each budget's counter again from the usage rows (while none of its reservations is in flight)."""
        for tenant in sorted(self.budgeted):
            await self.ledger.recount(tenant, lambda t=tenant: asyncio.to_thread(self.store.tenant_tokens, t))

    async def run(self) -> None:
        """Settle every second and recount every minute, for as long as the gateway runs."""
        recounted = time.monotonic()
        while True:
            await asyncio.sleep(SETTLE_EVERY_S)
            try:
                await self.settle_ended()
                if time.monotonic() - recounted >= RECOUNT_EVERY_S:
                    recounted = time.monotonic()
                    await self.recount()
            except Exception as exc:  # the database or Redis restarting: the next round tries again
                if _being_cancelled():
                    raise asyncio.CancelledError from exc  # a cancellation a client library took for its timeout
                log.warning("tenant reservations not settled this round (%s)", type(exc).__name__)

    async def aclose(self) -> None:
        await self.ledger.aclose()


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _next_window_s(window: int, now: float) -> str:
    return str(max(1, math.ceil((window + 1) * WINDOW_S - now)))


def _keys(tenant: str, window: int) -> tuple[str, str, str, str]:
    """The tenant's budget counter, its window's tokens, its reservations and its settle count."""
    base = f"llm-router:tenant:{tenant}"
    return f"{base}:used", f"{base}:tpm:{window}", f"{base}:reserved", f"{base}:settled"


OUTSTANDING_KEY = "llm-router:tenants-reserving"  # the tenants with reservations to settle
LOCK_KEY = "llm-router:quotas:lock"  # one reconciler at a time across the gateway processes

# Reserve ``amount`` if it fits the budget (the counter, once set) and the window's tokens per minute; else
# the limit that refused it and what is left. -2: the budget's counter is not set yet (read it from the rows).
_RESERVE = """
local amount, budget, tpm, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local used = redis.call('GET', KEYS[1])
if budget >= 0 then
    if not used then return {-2, 0} end
    used = tonumber(used)
    if used + amount > budget then return {-1, budget - used} end
end
local in_window = tonumber(redis.call('GET', KEYS[2]) or '0')
if tpm >= 0 and in_window + amount > tpm then return {-3, tpm - in_window} end
if used then redis.call('INCRBY', KEYS[1], amount) end
redis.call('INCRBY', KEYS[2], amount)
redis.call('EXPIRE', KEYS[2], ttl)
return {0, 0}
"""

# Settle one subject's reservation once: the budget's counter and its window take what it used instead.
_SETTLE = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held then return 0 end
local amount, window = string.match(held, '(%d+):(%d+)')
local delta = tonumber(ARGV[2]) - tonumber(amount)
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], delta) end
local window_key = ARGV[3] .. window
if redis.call('EXISTS', window_key) == 1 then redis.call('INCRBY', window_key, delta) end
redis.call('INCR', KEYS[3])
if redis.call('HLEN', KEYS[2]) == 0 then redis.call('SREM', KEYS[4], ARGV[4]) end
return 1
"""

# Tie a reservation to its subject; a subject reserved already (a repeated submission) gives the new one back.
_ATTACH = """
local amount, reserved, window = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local give_back = reserved - amount
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then give_back = reserved
else
    redis.call('HSET', KEYS[3], ARGV[1], amount .. ':' .. window)
    redis.call('SADD', KEYS[5], ARGV[5])
end
if give_back ~= 0 then
    if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], -give_back) end
    if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBY', KEYS[2], -give_back) end
end
return 1
"""

# Set the budget's counter from the rows, unless a reservation is in flight or one was settled since the read.
_RECOUNT = """
if redis.call('HLEN', KEYS[2]) > 0 then return 0 end
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class RedisLedger:
    def __init__(self, redis_url: str):
        self.redis = aioredis.Redis.from_url(redis_url)
        self._reserve = self.redis.register_script(_RESERVE)
        self._settle = self.redis.register_script(_SETTLE)
        self._attach = self.redis.register_script(_ATTACH)
        self._recount = self.redis.register_script(_RECOUNT)

    async def count_request(self, tenant: str, window: int) -> int:
        name = f"llm-router:tenant-rpm:{tenant}:{window}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(name)
        pipe.expire(name, WINDOW_S * 2)
        return int((await pipe.execute())[0])

    async def reserve(
        self, tenant: str, amount: int, window: int, budget: int | None, tpm: int | None, used_before: Any
    ) -> Refusal | None:
        used, in_window, _, _ = _keys(tenant, window)
        arguments = [amount, -1 if budget is None else budget, -1 if tpm is None else tpm, WINDOW_S * 2]
        code, left = (int(value) for value in await self._reserve(keys=[used, in_window], args=arguments))
        if code == -2:  # the first reservation since Redis started: the counter begins at the usage rows' sum
            await self.redis.set(used, await used_before(), nx=True)
            code, left = (int(value) for value in await self._reserve(keys=[used, in_window], args=arguments))
        if code == 0:
            return None
        return Refusal("budget" if code == -1 else "tpm", left)

    async def attach(self, reservation: Reservation, subject: str, amount: int) -> None:
        used, in_window, reserved, settled = _keys(reservation.tenant, reservation.window)
        await self._attach(
            keys=[used, in_window, reserved, settled, OUTSTANDING_KEY],
            args=[subject, amount, reservation.amount, reservation.window, reservation.tenant],
        )

    async def release(self, reservation: Reservation) -> None:
        used, in_window, _, _ = _keys(reservation.tenant, reservation.window)
        pipe = self.redis.pipeline(transaction=True)
        for key in (used, in_window):
            pipe.eval(
                "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECRBY', KEYS[1], ARGV[1]) end",
                1,
                key,
                reservation.amount,
            )
        await pipe.execute()

    async def outstanding(self) -> dict[str, dict[str, tuple[int, int]]]:
        # One reconciler at a time: the others would only settle the same reservations again (each once).
        if not await self.redis.set(LOCK_KEY, b"1", nx=True, px=int(SETTLE_EVERY_S * 900)):
            return {}
        found: dict[str, dict[str, tuple[int, int]]] = {}
        for raw in await cast(Awaitable[set[bytes]], self.redis.smembers(OUTSTANDING_KEY)):
            tenant = raw.decode()
            held = await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(_keys(tenant, 0)[2]))
            found[tenant] = {subject.decode(): _amount_and_window(value) for subject, value in held.items()}
        return found

    async def settle(self, tenant: str, subject: str, used: int) -> None:
        used_key, first_window, reserved, settled = _keys(tenant, 0)
        window_prefix = first_window.removesuffix("0")
        await self._settle(
            keys=[used_key, reserved, settled, OUTSTANDING_KEY], args=[subject, used, window_prefix, tenant]
        )

    async def recount(self, tenant: str, used_from_rows: Any) -> None:
        used, _, reserved, settled = _keys(tenant, 0)
        if await cast(Awaitable[int], self.redis.hlen(reserved)):
            return
        seen = (await self.redis.get(settled) or b"0").decode()
        await self._recount(keys=[used, reserved, settled], args=[await used_from_rows(), seen])

    async def aclose(self) -> None:
        await self.redis.aclose()


def _amount_and_window(held: bytes) -> tuple[int, int]:
    amount, window = held.decode().split(":")
    return int(amount), int(window)


class LocalLedger:
    """The same, for one gateway process without Redis."""

    def __init__(self) -> None:
        self.used: dict[str, int] = {}
        self.windows: dict[tuple[str, int], int] = defaultdict(int)
        self.reserved: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.lock = asyncio.Lock()

    async def count_request(self, tenant: str, window: int) -> int:
        self.requests[(tenant, window)] += 1
        return self.requests[(tenant, window)]

    async def reserve(
        self, tenant: str, amount: int, window: int, budget: int | None, tpm: int | None, used_before: Any
    ) -> Refusal | None:
        async with self.lock:
            if budget is not None and tenant not in self.used:
                self.used[tenant] = int(await used_before())
            if budget is not None and self.used[tenant] + amount > budget:
                return Refusal("budget", budget - self.used[tenant])
            if tpm is not None and self.windows[(tenant, window)] + amount > tpm:
                return Refusal("tpm", tpm - self.windows[(tenant, window)])
            if tenant in self.used:
                self.used[tenant] += amount
            self.windows[(tenant, window)] += amount
            return None

    async def attach(self, reservation: Reservation, subject: str, amount: int) -> None:
        async with self.lock:
            held = self.reserved[reservation.tenant]
            give_back = reservation.amount if subject in held else reservation.amount - amount
            if subject not in held:
                held[subject] = (amount, reservation.window)
            self._add(reservation.tenant, reservation.window, -give_back)

    async def release(self, reservation: Reservation) -> None:
        async with self.lock:
            self._add(reservation.tenant, reservation.window, -reservation.amount)

    async def outstanding(self) -> dict[str, dict[str, tuple[int, int]]]:
        return {tenant: dict(held) for tenant, held in self.reserved.items() if held}

    async def settle(self, tenant: str, subject: str, used: int) -> None:
        async with self.lock:
            held = self.reserved[tenant].pop(subject, None)
            if held is not None:
                self._add(tenant, held[1], used - held[0])

    async def recount(self, tenant: str, used_from_rows: Any) -> None:
        if not self.reserved[tenant]:
            used = int(await used_from_rows())
            async with self.lock:
                if not self.reserved[tenant]:
                    self.used[tenant] = used

    def _add(self, tenant: str, window: int, delta: int) -> None:
        if tenant in self.used:
            self.used[tenant] += delta
        if (tenant, window) in self.windows:
            self.windows[(tenant, window)] += delta

    async def aclose(self) -> None:
        self.reserved.clear()
