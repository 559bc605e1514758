"""Which jobs the event loop runs itself, as pure decisions: a fresh message of one recorded job, still waiting,
that is not answered from the cache and makes one plain call to its chain's first model. Anything else runs
the threads' path, which carries every case."""

from __future__ import annotations

from dataclasses import dataclass

from llm_router.broker.catalogue import Catalogue
from llm_router.broker.routing import Route, chain_now
from llm_router.tasks.errors import ConfigurationError, InvalidRequest
from llm_router.tasks.records import WAITING_STATUSES
from llm_router.tasks.schemas import ClassifyRequest, EmbedRequest, GenerateRequest, parse_request
from llm_router.tasks.store import JobView
from llm_router.workers.draining import Drained
from llm_router.workers.messages import BadMessage, Cursor, JobMessage, parse_messages

Request = GenerateRequest | EmbedRequest | ClassifyRequest


def fresh_job(item: Drained) -> JobMessage | None:
    """The one job of a message whose first run the loop may make: a job's id alone, at the start of its chain.
    None for a bulk message, a retry's or a fallback's message (it resumes a cursor), a message that carries its
    request (it is recorded where it runs), and a bad message (the threads' path records it)."""
    try:
        messages = parse_messages(item.args, item.kwargs)
    except BadMessage:
        return None
    if len(messages) != 1:
        return None
    message = messages[0]
    return message if message.request is None and message.cursor == Cursor() else None


@dataclass(frozen=True)
class LoopRun:
    """A job the loop runs: its request as parsed and its chain."""

    request: Request
    route: Route

    @property
    def model(self) -> str:
        return self.route.chain[0]


def loop_run(job: JobView, cached: JobView | None, kind: str, catalogue: Catalogue) -> LoopRun | None:
    """The run of a job the loop makes itself, or None for the threads' path: a job that ended or runs (a
    redelivery), has an answer in the cache, moved tier, streams, has a deadline to judge, cannot be parsed
    or routed (each recorded there, with its cause)."""
    if job.status not in WAITING_STATUSES or cached is not None or job.tier_hops or not isinstance(job.request, dict):
        return None
    try:
        request = parse_request({**job.request, "kind": kind})
        route = chain_now(request, job.tier or catalogue.default_tier, catalogue, moved=False)
    except (InvalidRequest, ConfigurationError):
        return None
    if request.deadline_s is not None or (isinstance(request, GenerateRequest) and request.stream):
        return None
    return LoopRun(request, route) if route.chain else None
