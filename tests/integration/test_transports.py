"""The transport contract on the fleet brokers: kombu's Redis layout read and written directly, and RabbitMQ
through a kombu channel (the same checks as tests/unit/test_transports.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import pytest
import redis

from llm_router.broker.celery_app import create_app
from llm_router.broker.settings import Settings
from llm_router.broker.transports import TaskMessage, Transport, open_transport
from llm_router.broker.transports.kombu_channel import KombuTransport
from llm_router.broker.transports.redis import RedisTransport
from llm_router.workers.async_pool.wakes import Wakes
from tests.conftest import empty_redis_db
from tests.support.transport_contract import TransportContract

REDIS_BROKER = "redis://127.0.0.1:6379/4"  # the draining tests' database: each test empties it first


def _opened(settings: Settings, url: str, kind: type) -> Iterator[Transport]:
    app = create_app(settings.model_copy(update={"broker_url": url}))
    opened = open_transport(app)
    assert isinstance(opened, kind)
    yield opened
    opened.close()
    app.close()


class TestRedis(TransportContract):
    lists_held = True

    @pytest.fixture
    def transport(self, cluster_settings: Settings) -> Iterator[Transport]:
        yield from _opened(cluster_settings, empty_redis_db(REDIS_BROKER), RedisTransport)


class TestRabbitMQ(TransportContract):
    lists_held = False  # RabbitMQ hands a closed connection's messages out again by itself

    @pytest.fixture
    def transport(
        self, request: pytest.FixtureRequest, cluster_settings: Settings, rabbit_vhost: Callable[[str], str]
    ) -> Iterator[Transport]:
        own_host = rabbit_vhost(f"transports_{request.node.originalname}"[:40])  # each test its own queues
        yield from _opened(cluster_settings, own_host, KombuTransport)


def test_a_message_published_on_redis_wakes_the_loops_that_take_from_its_queue(cluster_settings: Settings) -> None:
    app = create_app(cluster_settings.model_copy(update={"broker_url": empty_redis_db(REDIS_BROKER)}))
    publisher = open_transport(app)
    message = TaskMessage("llm_router.embed", "job-1", ["job-1"], {}, "fast", 1, None)

    async def woken(queue: str) -> tuple[bool, bool]:
        wakes = Wakes()
        listening = asyncio.create_task(wakes.listen(REDIS_BROKER, [queue]))
        try:
            async with asyncio.timeout(5):  # subscribed: it says so, and takes once in case it missed one
                await wakes.event.wait()
            assert wakes.heard
            wakes.event.clear()
            await asyncio.to_thread(publisher.publish, message)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await wakes.event.wait()
            return wakes.heard, wakes.event.is_set()
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening

    try:
        assert asyncio.run(woken("fast")) == (True, True)
        assert asyncio.run(woken("quality")) == (True, False)  # another queue's loops sleep on
    finally:
        publisher.close()
        app.close()


def test_an_app_closed_closes_its_broker_connections_and_the_next_one_opens_its_own(
    cluster_settings: Settings,
) -> None:
    # Celery's default pool is process-wide, keyed by the broker's address: a Router built after another one
    # closed was handed its connections, dead when the broker had restarted in between (a status broadcast
    # then failed with "Connection closed by server").
    settings = cluster_settings.model_copy(update={"broker_url": empty_redis_db(REDIS_BROKER)})
    admin = redis.Redis.from_url(REDIS_BROKER)
    db = str(admin.connection_pool.connection_kwargs["db"])

    def connected() -> set[str]:
        return {str(client["id"]) for client in admin.client_list() if str(client["db"]) == db}

    before = connected()
    first = create_app(settings)
    first.control.broadcast("ping", reply=True, timeout=0.2)  # no worker answers: it opens and waits
    opened = connected() - before
    assert opened
    first.close()
    assert not connected() & opened  # none kept in a pool for the next app
    second = create_app(settings)
    try:
        second.control.broadcast("ping", reply=True, timeout=0.2)
        assert connected() - before - opened  # its own connections
    finally:
        second.close()
        admin.close()
