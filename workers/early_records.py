"""Recording the jobs of a shared model call while the model goes on with the others.

A call of many embed or classify jobs runs their inputs through the model in passes, shortest first. A job
whose inputs have all been through is finished: the backend hands its result to ``ROW_DONE``, and a writer
thread records it (with the others finished since its last write, in one transaction) while the model
thread runs the next pass. Without it, a process of one torch thread left its core idle while it wrote a
call's records, 14 % of its time with one-input jobs.

What the writer has not recorded when the call ends is recorded by the caller, as before. A call that fails
leaves the jobs recorded so far succeeded; only the others run again on their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

# Set around a call of many requests: called (on the model thread) with a request's index and its result as
# soon as all of its inputs have gone through the model.
ROW_DONE: ContextVar[Callable[[int, Any], None] | None] = ContextVar("llm_router_row_done", default=None)

Row = TypeVar("Row")


class EarlyRecords(Generic[Row]):
    """Rows of a call, recorded by ``write`` on a thread of their own as they finish, a batch per write."""

    def __init__(self, rows: list[Row], write: Callable[[list[tuple[Row, Any]]], None]):
        self._rows = rows
        self._write = write
        self._waiting: list[tuple[Row, Any]] = []
        self._recorded: set[int] = set()
        self._failure: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._writer: threading.Thread | None = None

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Around the model call: finished rows go to the writer. On leaving, the writer has written all it
        was given, or failed (``raise_failure``)."""
        token = ROW_DONE.set(self._finished)
        try:
            yield
        finally:
            ROW_DONE.reset(token)
            self._close()

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def recorded(self, index: int) -> bool:
        return index in self._recorded

    def _finished(self, index: int, result: Any) -> None:
        with self._changed:
            if self._failure is not None or self._closed:
                return  # the caller records it
            self._waiting.append((self._rows[index], (index, result)))
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="llm-router-early-records", daemon=True)
                self._writer.start()
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                batch, self._waiting = self._waiting, []
                if not batch:
                    return
            try:
                self._write([(row, result) for row, (_, result) in batch])
            except BaseException as exc:  # handed to the caller, which decides
                with self._changed:
                    self._failure = exc
                    self._waiting = []
                return
            with self._changed:
                self._recorded.update(index for _, (index, _) in batch)

    def _close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
            writer = self._writer
        if writer is not None:
            writer.join()
