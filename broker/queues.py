"""The queue topology: one durable queue per tier on one direct exchange."""

from __future__ import annotations

from kombu import Exchange, Queue

from broker.catalogue import Catalogue
from broker.routing import queue_for_tier

EXCHANGE = Exchange("llm-router", type="direct", durable=True)


def tier_queues(catalogue: Catalogue) -> list[Queue]:
    return [
        Queue(queue_for_tier(tier), EXCHANGE, routing_key=queue_for_tier(tier), durable=True)
        for tier in catalogue.ordered_tiers
    ]


TASK_NAMES = {"generate": "tasks.generate", "embed": "tasks.embed", "classify": "tasks.classify"}
