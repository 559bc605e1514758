"""The messages a broker handed out and has not had acknowledged, and the jobs they name: what the sweeper reads
to find the messages a dead worker took and never started. Read through the broker's transport
(``llm_router.broker.transports``)."""

from __future__ import annotations

from llm_router.broker.transports import Taken, Transport
from llm_router.workers.messages import BadBulkMessage, BadMessage, parse_messages


def job_ids_in(held: Taken) -> list[str]:
    """The jobs of a message (its body a JSON ``[args, kwargs, options]``); nothing for what is not a job's."""
    body = held.json_body()
    try:
        args, kwargs = body[:2]
        return [job.job_id for job in parse_messages(tuple(args), dict(kwargs))]
    except BadBulkMessage as exc:
        return exc.job_ids
    except BadMessage as exc:
        return [exc.job_id] if exc.job_id else []
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return []


class HeldMessages:
    """The messages a broker handed out and has not had acknowledged, by delivery tag."""

    def __init__(self, transport: Transport):
        self.transport = transport

    def held_since(self, before: float) -> dict[str, list[str]]:
        """Delivery tag → the jobs of its message, for messages handed out before ``before`` (a Unix time)."""
        return {held.tag: job_ids_in(held) for held in self.transport.held_since(before)}

    def empty(self, queue: str) -> bool:
        """Whether no message waits on ``queue``, at any priority."""
        return self.transport.empty(queue)

    def drop(self, tags: list[str]) -> None:
        """Drop held copies whose jobs were published again; a holder that lives after all finds its
        acknowledgement a no-op."""
        self.transport.drop_held(tags)
