"""Recording a shared call's finished jobs while the model goes on (workers.early_records), with an
in-memory writer, and the local backend handing each request's result over as soon as it is complete."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from broker.catalogue import load_catalogue
from tasks.schemas import EmbedRequest
from workers.backends.local import LocalBackend
from workers.bundled.prepare import MINILM_ID
from workers.early_records import ROW_DONE, EarlyRecords
from workers.registry import ModelRegistry


def test_finished_rows_are_written_on_another_thread_in_batches_and_the_rest_left_to_the_caller() -> None:
    writes: list[list[tuple[str, Any]]] = []
    writers: set[str] = set()
    first_write_started, release_first_write = threading.Event(), threading.Event()

    def write(rows: list[tuple[str, Any]]) -> None:
        writers.add(threading.current_thread().name)
        if not writes:
            first_write_started.set()
            assert release_first_write.wait(10)
        writes.append(rows)

    early = EarlyRecords(["a", "b", "c", "d"], write)
    with early.collecting():
        done = ROW_DONE.get()
        assert done is not None
        done(2, "result c")
        assert first_write_started.wait(10)  # the writer holds c while two more finish
        done(0, "result a")
        done(3, "result d")
        release_first_write.set()
    assert ROW_DONE.get() is None
    assert writes == [[("c", "result c")], [("a", "result a"), ("d", "result d")]]
    assert writers == {"llm-router-early-records"}
    assert [early.recorded(index) for index in range(4)] == [True, False, True, True]  # b is the caller's
    early.raise_failure()  # nothing failed


def test_a_failed_write_is_raised_to_the_caller_and_what_follows_is_left_to_it() -> None:
    def write(rows: list[tuple[str, Any]]) -> None:
        raise ConnectionError("the database went away")

    early = EarlyRecords(["a", "b"], write)
    with early.collecting():
        done = ROW_DONE.get()
        assert done is not None
        done(0, "result a")
    with pytest.raises(ConnectionError, match="went away"):
        early.raise_failure()
    assert not early.recorded(0) and not early.recorded(1)


def test_the_local_backend_hands_each_request_over_when_its_last_input_is_through(models_dir: Path) -> None:
    backend = LocalBackend(ModelRegistry(load_catalogue(None), models_dir, "cpu"), batch_size=1)
    requests = [
        EmbedRequest(input=["a rather longer sentence than the others, of many more tokens", "tiny"]),
        EmbedRequest(input="short one"),
        EmbedRequest(input=["mid sized sentence here", "x"]),
    ]
    handed: list[tuple[int, Any]] = []
    token = ROW_DONE.set(lambda index, result: handed.append((index, result)))
    try:
        results = backend.embed_many(MINILM_ID, requests)
    finally:
        ROW_DONE.reset(token)
    # one input a pass, shortest first: the request of the longest input finishes last
    assert [index for index, _ in handed] == [1, 2, 0]
    assert [result for _, result in sorted(handed, key=lambda pair: pair[0])] == results
    assert [len(result.data) for result in results] == [2, 1, 2]
