"""The embedded broker on a disk that fails: a message written half is never seen, one that cannot be read is
set aside, and the messages behind it are taken as usual. Through kombu, on a folder of the test's."""

from __future__ import annotations

import builtins
import errno
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue
from kombu.exceptions import ChannelError

from llm_router.broker import embedded_broker
from llm_router.broker.embedded_broker import CORRUPT_FOLDER

EXCHANGE = Exchange("llm-router", type="direct")
QUEUE = Queue("fast", EXCHANGE, routing_key="fast")


def _connection(root: Path) -> Connection:
    for name in ("queue", "processed", CORRUPT_FOLDER):
        (root / name).mkdir(parents=True, exist_ok=True)
    options = {
        "data_folder_in": str(root / "queue"),
        "data_folder_out": str(root / "queue"),
        "processed_folder": str(root / "processed"),
        "store_processed": False,
    }
    return Connection(
        "filesystem://", transport="llm_router.broker.embedded_broker:Transport", transport_options=options
    )


def _publish(connection: Connection, body: dict[str, Any]) -> None:
    with connection.Producer() as producer:
        producer.publish(body, exchange=EXCHANGE, routing_key="fast", declare=[QUEUE], serializer="json")


def _take(connection: Connection) -> Any:
    message = connection.SimpleQueue(QUEUE).get(timeout=1)
    message.ack()
    return message.payload


def test_a_message_the_disk_cannot_hold_whole_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = builtins.open

    class FullDisk:
        def __init__(self, path: str, mode: str) -> None:
            self.file = real_open(path, mode)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *_: object) -> None:
            self.file.close()

        def write(self, data: bytes) -> None:
            self.file.write(data[: len(data) // 2])  # half of it went down, then the disk was full
            raise OSError(errno.ENOSPC, "No space left on device")

    with _connection(tmp_path) as connection:
        monkeypatch.setattr(builtins, "open", lambda path, mode="r", *a, **k: FullDisk(path, mode))
        with pytest.raises(ChannelError, match="No space left on device"):
            _publish(connection, {"job_id": "lost"})
        monkeypatch.setattr(builtins, "open", real_open)
        assert list((tmp_path / "queue").iterdir()) == []  # neither a message nor a part of one


def test_a_message_file_that_cannot_be_read_is_set_aside_and_the_next_is_taken(tmp_path: Path) -> None:
    with _connection(tmp_path) as connection:
        _publish(connection, {"job_id": "first"})
        (tmp_path / "queue" / f"{0:020d}_empty.fast.msg").write_bytes(b"")  # oldest of all: taken first
        (tmp_path / "queue" / f"{1:020d}_cut.fast.msg").write_bytes(b'{"body": "cut sh')
        assert _take(connection) == {"job_id": "first"}
        assert sorted(path.name for path in (tmp_path / CORRUPT_FOLDER).iterdir()) == [
            f"{0:020d}_empty.fast.msg",
            f"{1:020d}_cut.fast.msg",
        ]
        assert list((tmp_path / "queue").iterdir()) == []


def test_messages_are_taken_in_the_order_they_were_written_across_a_change_of_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamps = iter([9_999, 10_000, 10_001])  # a stamp unpadded would sort 10000 and 10001 before 9999
    monkeypatch.setattr(embedded_broker.time, "time_ns", lambda: next(stamps))
    with _connection(tmp_path) as connection:
        for n in range(3):
            _publish(connection, {"job_id": str(n)})
        assert [_take(connection)["job_id"] for _ in range(3)] == ["0", "1", "2"]
