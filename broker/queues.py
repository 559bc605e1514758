"""The queue topology: two durable queues per tier (interactive and bulk lanes) on one direct exchange.

The order matters: a worker consumes its queues in the order given, every interactive queue before any
bulk queue (kombu's Redis transport with ``queue_order_strategy="priority"`` asks for them in that order).
"""

from __future__ import annotations

from kombu import Exchange, Queue

from llm_router.broker.catalogue import Catalogue
from llm_router.broker.routing import Lane, lane_of, queue_for_tier
from llm_router.tasks.limits import MAX_PRIORITY

EXCHANGE = Exchange("llm-router", type="direct", durable=True)


LANES: tuple[Lane, ...] = ("interactive", "bulk")


def queue_names(tiers: list[str], lanes: tuple[Lane, ...] = LANES) -> list[str]:
    """The queues of ``tiers`` in consumption order: all interactive lanes, then all bulk lanes."""
    return [queue_for_tier(tier, lane) for lane in LANES if lane in lanes for tier in tiers]


def is_amqp(broker_url: str) -> bool:
    return broker_url.startswith(("amqp", "pyamqp"))


def tier_queues(catalogue: Catalogue, broker_url: str = "") -> list[Queue]:
    """The queues to declare. On RabbitMQ the interactive lanes are priority queues (``x-max-priority``); on
    Redis kombu keeps a list per priority step under each queue's name, so its queues need no argument."""
    arguments = {"x-max-priority": MAX_PRIORITY} if is_amqp(broker_url) else None
    return [
        Queue(
            name,
            EXCHANGE,
            routing_key=name,
            durable=True,
            queue_arguments=arguments if lane_of(name) == "interactive" else None,
        )
        for name in queue_names(catalogue.ordered_tiers)
    ]


def redis_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps a queue's messages in, one per priority step (see ``message_priority``)."""
    return [queue if step == 0 else f"{queue}\x06\x16{step}" for step in range(MAX_PRIORITY + 1)]


def message_priority(priority: int | None, queue: str, broker_url: str) -> int | None:
    """The broker priority of a job's message: a job's ``priority`` (0 to 9, higher first, 0 when unset)
    orders the interactive lane; a bulk lane has no priorities.

    RabbitMQ takes higher numbers first, as jobs do. Kombu's Redis transport takes lower numbers first, and
    each poll asks for every queue's step 0, then every queue's step 1, and so on: bulk messages go to the
    last step, where they still come after the interactive ones of the same step (the worker's queue
    order). The filesystem broker of the embedded mode has no priorities."""
    interactive = lane_of(queue) == "interactive"
    if is_amqp(broker_url):
        return (priority or 0) if interactive else None
    if broker_url.startswith(("redis", "rediss")):
        return MAX_PRIORITY - (priority or 0) if interactive else MAX_PRIORITY
    return None


# A message header with the number of texts its jobs run through the model (absent: one).
INPUTS_HEADER = "llm_router_inputs"

TASK_NAMES = {"generate": "llm_router.generate", "embed": "llm_router.embed", "classify": "llm_router.classify"}
# The names before the package was llm_router: messages queued under them still run (kept for one release).
LEGACY_TASK_NAMES = {"generate": "tasks.generate", "embed": "tasks.embed", "classify": "tasks.classify"}
KIND_OF_TASK = {name: kind for names in (TASK_NAMES, LEGACY_TASK_NAMES) for kind, name in names.items()}
