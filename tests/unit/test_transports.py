"""The transport contract on the brokers that need no service: in memory, and the embedded filesystem broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_router.broker.celery_app import create_app
from llm_router.broker.settings import Settings
from llm_router.broker.transports import MemoryBroker, MemoryTransport, Transport, open_transport
from llm_router.broker.transports.kombu_channel import KombuTransport
from tests.support.transport_contract import TransportContract


class TestInMemory(TransportContract):
    lists_held = True

    @pytest.fixture
    def transport(self) -> Transport:
        return MemoryTransport(MemoryBroker())


class TestEmbeddedFilesystem(TransportContract):
    lists_held = False  # a message taken from a folder is the taker's: nothing lists it

    @pytest.fixture
    def transport(self, tmp_path: Path) -> Iterator[Transport]:
        app = create_app(Settings(var_dir=tmp_path))
        opened = open_transport(app)
        assert isinstance(opened, KombuTransport)
        yield opened
        opened.close()
        app.close()
