"""The embedded mode's broker: kombu's filesystem transport (a file per message under ``var/broker/queue``),
made safe for a disk that fills up.

kombu writes a message straight to its final name, so a full disk leaves an empty or half-written ``.msg``
file that a worker then takes, fails to parse and dies on ("Unrecoverable error: JSONDecodeError"), a file
or two per start, the good messages behind them never run. Here a message is written under a hidden name and
renamed into place once whole: a reader never sees a partial one, and one that could not be written leaves
nothing (the producer is told, and the job is recorded unsent). A message file that cannot be read all the
same (a disk error, a file from elsewhere) is moved aside into ``var/broker/corrupt`` with one warning, and the
worker goes on; its job, still queued in the database, is published again by ``llm-router requeue --stale``.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

CORRUPT_FOLDER = "corrupt"


def message_stamp() -> str:
    """A message file's name starts with this: the wall clock in nanoseconds at a fixed width, so that names
    sort in the order they were written, across a change in the number's digits and across restarts (kombu's
    own stamp, the monotonic clock in milliseconds unpadded, sorts 10000 before 9999 and starts over at boot)."""
    return f"{time.time_ns():020d}"


class Channel(filesystem.Channel):
    _at_beginning = False

    def _restore_at_beginning(self, message: Any) -> Any:
        """A message given back goes first in line again, as on Redis and RabbitMQ (kombu's filesystem
        transport would put it last)."""
        self._at_beginning = True
        try:
            return self._restore(message)
        finally:
            self._at_beginning = False

    def _first_stamp(self, queue: str) -> str:
        """A stamp that sorts before every message waiting on ``queue``."""
        wanted = f"{queue}.msg"
        stamps = [
            name.partition("_")[0]
            for name in os.listdir(self.data_folder_in)
            if not name.startswith(".") and name.partition(".")[2] == wanted
        ]
        first = min((int(stamp) for stamp in stamps if stamp.isdigit()), default=int(message_stamp()))
        return f"{max(first - 1, 0):020d}"

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu's own
        """Write the message whole under a hidden name, then rename it into the queue."""
        stamp = self._first_stamp(queue) if self._at_beginning else message_stamp()
        name = f"{stamp}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as file:
                file.write(str_to_bytes(dumps(payload)))
            os.rename(partial, final)
        except OSError as exc:
            with suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"cannot add a message to {self.data_folder_out!r}: {exc.strerror}") from exc

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        """Take the oldest message of ``queue``; set aside any that cannot be read, and go on."""
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.startswith(".") or name.partition(".")[2] != wanted:
                continue
            taken = self._take(name)
            if taken is None:
                continue  # another consumer took it first
            try:
                message = loads(bytes_to_str(taken.read_bytes()))
            except (OSError, ValueError) as exc:  # ValueError: not JSON (or not UTF-8), empty or cut short
                self._set_aside(taken, exc)
                continue
            taken.unlink(missing_ok=True)
            return message
        raise filesystem.Empty()

    def _take(self, name: str) -> Path | None:
        """Move a message file out of the queue, so that no other consumer takes it too."""
        source = os.path.join(self.data_folder_in, name)
        target = Path(self.processed_folder) / name
        try:
            os.rename(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                return None
            try:  # the processed folder is on another filesystem
                shutil.move(source, target)
            except OSError:
                return None
        return target

    def _set_aside(self, taken: Path, exc: Exception) -> None:
        corrupt = Path(self.data_folder_in).parent / CORRUPT_FOLDER
        with suppress(OSError):
            corrupt.mkdir(exist_ok=True)
            shutil.move(str(taken), corrupt / taken.name)
        log.warning(
            "message file %s could not be read (%s: %s); set aside in %s",
            taken.name,
            type(exc).__name__,
            exc,
            corrupt,
        )


class Transport(filesystem.Transport):
    Channel = Channel
