"""Packing bulk jobs into broker messages: many jobs per message, similar inputs together.

A bulk message carries up to ``max_jobs`` job ids of one kind and one queue. Jobs are ordered by the size of
their input first, so the worker's model calls pad little; generation jobs travel one per message, since
each may run for seconds and a worker must be free to take an interactive job between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_router.tasks.store import NewJob


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


def pack(jobs: list[NewJob], max_jobs: int, max_inputs: int) -> list[Packet]:
    """Packets of the jobs' ids, in the order they are best sent."""

    def order(job: NewJob) -> tuple[str, str, str, int]:
        texts = _texts(job.request)
        return job.kind, job.queue, str(job.request.get("model", "")), sum(map(len, texts)) // len(texts)

    packets: list[Packet] = []
    current: Packet | None = None
    inputs = 0
    for job in sorted(jobs, key=order):
        size = len(_texts(job.request))
        fits = (
            current is not None
            and current.kind == job.kind != "generate"
            and current.queue == job.queue
            and len(current.job_ids) < max_jobs
            and inputs + size <= max_inputs
        )
        if current is not None and fits:
            current.job_ids.append(job.job_id)
            current.inputs += size
            inputs += size
            continue
        current = Packet(job.kind, job.queue, [job.job_id], size)
        packets.append(current)
        inputs = size
    return packets
