"""The transport contract on the fleet brokers: kombu's Redis layout read and written directly, and RabbitMQ
through a kombu channel (the same checks as tests/unit/test_transports.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from llm_router.broker.celery_app import create_app
from llm_router.broker.settings import Settings
from llm_router.broker.transports import Transport, open_transport
from llm_router.broker.transports.kombu_channel import KombuTransport
from llm_router.broker.transports.redis import RedisTransport
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
