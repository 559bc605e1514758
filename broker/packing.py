"""Packing bulk jobs into broker messages: many jobs per message, similar inputs together.

A bulk message carries up to ``max_jobs`` job ids of one kind and one queue. Jobs are ordered by the size of
their input first, so the worker's model calls pad little; generation jobs travel one per message, since
each may run for seconds and a worker must be free to take an interactive job between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Packet:
    kind: str
    queue: str
    job_ids: list[str]
    inputs: int = 0


def input_count(request: dict[str, Any]) -> int:
    """How many texts a request runs through the model: what a worker's ``--max-batch`` counts."""
    return len(_texts(request))


def _texts(request: dict[str, Any]) -> list[str]:
    value = request.get("input")
    return value if isinstance(value, list) else [str(value or request.get("prompt") or "")]


def pack(rows: list[dict[str, Any]], max_jobs: int, max_inputs: int) -> list[Packet]:
    """Rows have ``job_id``, ``kind``, ``queue`` and ``request`` (as stored)."""

    def order(row: dict[str, Any]) -> tuple[str, str, str, int]:
        texts = _texts(row["request"])
        return row["kind"], row["queue"], str(row["request"].get("model", "")), sum(map(len, texts)) // len(texts)

    packets: list[Packet] = []
    current: Packet | None = None
    inputs = 0
    for row in sorted(rows, key=order):
        size = len(_texts(row["request"]))
        fits = (
            current is not None
            and current.kind == row["kind"] != "generate"
            and current.queue == row["queue"]
            and len(current.job_ids) < max_jobs
            and inputs + size <= max_inputs
        )
        if current is not None and fits:
            current.job_ids.append(row["job_id"])
            current.inputs += size
            inputs += size
            continue
        current = Packet(row["kind"], row["queue"], [row["job_id"]], size)
        packets.append(current)
        inputs = size
    return packets
