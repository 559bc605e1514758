"""The queue topology: two durable queues per tier (interactive and bulk lanes) on one direct exchange.

The order matters: a worker consumes its queues in the order given, every interactive queue before any
bulk queue (kombu's Redis transport with ``queue_order_strategy="priority"`` asks for them in that order).
"""

from __future__ import annotations

from kombu import Exchange, Queue

from broker.catalogue import Catalogue
from broker.routing import Lane, queue_for_tier

EXCHANGE = Exchange("llm-router", type="direct", durable=True)


LANES: tuple[Lane, ...] = ("interactive", "bulk")


def queue_names(tiers: list[str], lanes: tuple[Lane, ...] = LANES) -> list[str]:
    """The queues of ``tiers`` in consumption order: all interactive lanes, then all bulk lanes."""
    return [queue_for_tier(tier, lane) for lane in LANES if lane in lanes for tier in tiers]


def tier_queues(catalogue: Catalogue) -> list[Queue]:
    return [Queue(name, EXCHANGE, routing_key=name, durable=True) for name in queue_names(catalogue.ordered_tiers)]


# A message header with the number of texts its jobs run through the model (absent: one).
INPUTS_HEADER = "llm_router_inputs"

TASK_NAMES = {"generate": "tasks.generate", "embed": "tasks.embed", "classify": "tasks.classify"}
