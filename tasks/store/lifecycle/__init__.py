"""Every state change of a job and of its attempts, in one place, each written once and set-based (it takes
many jobs; one job is a set of one):

    submit        record jobs queued (a batch's at once; one answered from the cache at once)
    start         take waiting jobs under a lease, an attempt opened for each
    succeed       record the answers of started jobs: result, attempt, usage row
    fail          end jobs failed; fail_attempts closes attempts that failed (the job goes on or not)
    skip          record a model passed over (cooling down) as an attempt not made
    retry, defer  a job waits for its next message (after a failure; for a rate limit or a cooling chain)
    escalate      move a job to another tier's queue (tier fallback)
    cancel        end waiting jobs cancelled (a running one is stopped by its worker, then succeeds cancelled)
    expire        end a job not started within its deadline
    recover       queue again a running job whose worker died (its attempt closed as lost)
    reject        record a request that cannot run

One guard holds everywhere (``guards``): a job that ended never changes, and a job that ends leaves no
attempt open. Leases, due times and deadlines are the database's clock (``tasks.store.clock``). Nothing
outside this package writes a job's status or an attempt's.
"""

from __future__ import annotations

from llm_router.tasks.store.lifecycle.ending import Ending
from llm_router.tasks.store.lifecycle.shapes import (
    AttemptFailure,
    AttemptSpec,
    Cancellation,
    Started,
    Starts,
    Success,
)
from llm_router.tasks.store.lifecycle.starting import Starting
from llm_router.tasks.store.lifecycle.submitting import Submitting
from llm_router.tasks.store.lifecycle.waiting import Waiting

__all__ = [
    "AttemptFailure",
    "AttemptSpec",
    "Cancellation",
    "Lifecycle",
    "Started",
    "Starts",
    "Success",
]


class Lifecycle(Submitting, Starting, Ending, Waiting):
    """The one door through which a job's and an attempt's status change."""
