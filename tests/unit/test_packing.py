"""Packing bulk jobs into messages: few messages, similar inputs together, generation one per message."""

from __future__ import annotations

from llm_router.broker.packing import pack
from llm_router.broker.queues import queue_names
from llm_router.tasks.store import NewJob


def _row(job_id: str, kind: str, text: str | list[str], queue: str = "fast.bulk") -> NewJob:
    request = {"kind": kind, "prompt": text} if kind == "generate" else {"kind": kind, "input": text}
    return NewJob(job_id, kind, request, queue.split(".")[0], queue)


def test_jobs_of_one_kind_and_queue_share_messages_up_to_the_limits() -> None:
    rows = [_row(f"e{i}", "embed", ["x" * (i % 7 + 1)]) for i in range(10)]
    rows += [_row(f"c{i}", "classify", ["y"]) for i in range(3)]
    rows += [_row(f"b{i}", "embed", ["z"], queue="balanced.bulk") for i in range(2)]
    packets = pack(rows, max_jobs=4, max_inputs=100)
    assert sorted(len(p.job_ids) for p in packets) == [2, 2, 3, 4, 4]  # embed 4+4+2, classify 3, balanced 2
    for packet in packets:
        kinds = {row.kind for row in rows if row.job_id in packet.job_ids}
        queues = {row.queue for row in rows if row.job_id in packet.job_ids}
        assert kinds == {packet.kind} and queues == {packet.queue}
    assert sorted(job for p in packets for job in p.job_ids) == sorted(row.job_id for row in rows)


def test_similar_lengths_travel_together_and_inputs_are_capped() -> None:
    rows = [_row(f"j{i}", "embed", ["w " * (n + 1)] * 3) for i, n in enumerate([9, 1, 8, 2, 7, 3])]
    packets = pack(rows, max_jobs=64, max_inputs=6)  # two jobs of three inputs each per message
    assert [p.job_ids for p in packets] == [["j1", "j3"], ["j5", "j4"], ["j2", "j0"]]
    assert [p.inputs for p in packets] == [6, 6, 6]


def test_generation_jobs_travel_one_per_message() -> None:
    packets = pack([_row(f"g{i}", "generate", "hello") for i in range(3)], max_jobs=64, max_inputs=256)
    assert [p.job_ids for p in packets] == [["g0"], ["g1"], ["g2"]]


def test_every_interactive_queue_comes_before_any_bulk_queue() -> None:
    assert queue_names(["fast", "balanced"]) == ["fast", "balanced", "fast.bulk", "balanced.bulk"]
    assert queue_names(["fast"], ("bulk",)) == ["fast.bulk"]
