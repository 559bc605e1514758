"""The sweeper: jobs that a dead worker or a lost message left behind are published again, with no operator.

Every worker process runs a sweeper thread; one at a time cluster-wide (a Redis lock) sweeps, every
``sweep_interval_s``:

- a **running** job whose lease ran out: its worker process stopped renewing it (it died, whole or in part,
  or lost its database for longer than a lease), so the job is published again at once. The lease is the
  heartbeat: a live worker renews the leases of its running jobs every third of ``lease_s``;
- every **queued or retrying** job when the broker lost its data: a mark the sweeper keeps in the broker's
  Redis database is gone or another than the one the database says the last recovery saw (a Redis restarted
  without persistence, a flushed database). Each job is published again, with what is left of its countdown;
- a **queued or retrying** job whose message a worker took and never started (Redis brokers): a worker
  killed whole leaves the messages it had taken unacknowledged, and the broker hands them out again only
  after its visibility timeout, hours later. A message handed out ``held_after_s`` ago whose waiting jobs
  have all been due that long is taken for held by a dead worker: its jobs are published again and the held
  copy is dropped. (A live worker starts what it takes at once, or at its countdown; if the one holding it
  lives after all, the job still runs once.) A worker killed between taking a message off its queue and
  recording it unacknowledged (kombu's Redis transport does these in two steps) leaves no copy at all: a job
  due twice ``held_after_s`` ago on a queue that holds no message, and in no held message, is published
  again (a producer still publishing a large batch may see a few of its jobs published twice: each runs once);
- a **queued or retrying** job whose message has been due for ``lost_message_after_s``: a message lost in
  some other way (a long backlog is not lost: its jobs wait that long before they are taken for lost);
- a **pending webhook** whose delivery was due, or had to be recorded, ``held_after_s`` ago: its message,
  or the process sending it, was lost.

Once an hour, with a retention set, it prunes the jobs that ended longer ago (``JobStore.prune``).

A job published again that another message ends first is not run twice: a worker ignores a message of a
job in a final state, and puts off one of a job that a live worker runs. What was recovered, and from which
dead worker, is kept in Redis for ``llm-router status``.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis

from llm_router.tasks.records import JobStatus, aware
from llm_router.tasks.store import JobStore, JobView, WebhookView
from llm_router.workers.broker_mark import BrokerMark
from llm_router.workers.held_messages import HeldMessages

log = logging.getLogger(__name__)

LOCK_KEY = "llm-router:sweeper:lock"
RECOVERED_KEY = "llm-router:recovered"  # the latest recoveries, newest first
DEAD_WORKERS_KEY = "llm-router:dead-workers"  # owner → when its jobs were last recovered
RECOVERY_KEY = "llm-router:broker-recovery"  # how far the recovery from a broker loss got, for the next sweeper
PRUNED_KEY = "llm-router:pruned"  # set for an hour after a prune: the cluster prunes once an hour
PRUNE_EVERY_S = 3600
SWEEP_PAGE = 500  # lost jobs read and published per page of a sweep
STALLED_PIPELINE_S = 5.0  # a pipeline with no step in flight this long after it began: carried on by the sweeper
KEEP_RECOVERED = 200
# (job, queue, countdown in seconds): publishes the job's message again.
Publish = Callable[[JobView, str, float], None]
# The queue a lost job goes back to, or None when no tier serves it.
QueueOf = Callable[[JobView], str | None]


@dataclass(frozen=True)
class Retain:
    """How long jobs that ended are kept, and whether only their requests and results go after that."""

    days: float
    results_only: bool = False


@dataclass(frozen=True)
class Sweep:
    """What one sweep found and published again."""

    abandoned: list[JobView]  # running under a lease that ran out
    lost: list[JobView]  # queued or retrying, their message lost
    broker_lost_data: bool
    stranded: list[JobView] = field(default_factory=list)  # waiting, their message held by a dead worker
    vanished: list[JobView] = field(default_factory=list)  # waiting on an empty queue, their message nowhere

    @property
    def count(self) -> int:
        return len(self.abandoned) + len(self.lost) + len(self.stranded) + len(self.vanished)


class Sweeper:
    """Finds the jobs nothing will run and publishes them again; ``sweep`` is one round."""

    def __init__(
        self,
        store: JobStore,
        client: redis.Redis,
        publish: Publish,
        queue_of: QueueOf,
        *,
        interval_s: float,
        lost_message_after_s: float,
        broker_mark: BrokerMark | None = None,
        held: HeldMessages | None = None,
        held_after_s: float = 30.0,
        queues: list[str] | None = None,
        retention: Retain | None = None,
        carry_on: Callable[[str], None] | None = None,
        resend_webhook: Callable[[WebhookView], None] | None = None,
    ):
        self.store, self.redis, self.publish, self.queue_of = store, client, publish, queue_of
        self.interval_s, self.lost_message_after_s = interval_s, lost_message_after_s
        self.broker_mark, self.retention, self.carry_on = broker_mark, retention, carry_on
        self.resend_webhook = resend_webhook
        self.held, self.held_after_s, self.queues = held, held_after_s, queues or []
        self._swept_every_page = False
        self._token = uuid.uuid4().hex.encode()
        self._stop = threading.Event()

    def start(self) -> Sweeper:
        threading.Thread(target=self._run, name="llm-router-sweeper", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self.take_turn():
                    self.sweep()
            except Exception as exc:  # Redis or the database restarting: the next round tries again
                log.warning("sweep skipped (%s: %s)", type(exc).__name__, exc)

    def take_turn(self) -> bool:
        """Whether this process sweeps this round. One sweeper holds the lock while it lives (renewing it each
        round); if it dies, another takes over after two rounds."""
        ttl_ms = max(1000, int(self.interval_s * 2000))
        if self.redis.set(LOCK_KEY, self._token, nx=True, px=ttl_ms):
            return True
        if self.redis.get(LOCK_KEY) == self._token:
            self.redis.pexpire(LOCK_KEY, ttl_ms)
            return True
        return False

    def sweep(self, now: datetime | None = None) -> Sweep:
        """One round. Leases and due times are judged on the database's clock, read once (``now``: another
        moment, for tests), never this host's: a sweeper whose clock runs ahead takes no live job for lost."""
        now = now or self.store.database_now()
        lost_mark = self.broker_mark.lost_since_recovered() if self.broker_mark is not None else None
        broker_lost_data = lost_mark is not None
        # After a loss every waiting job's message is gone, whenever it is due; otherwise a message is taken
        # for lost once it has been due for a long time (a backlog that long is not lost, only slow).
        waiting_before = (
            datetime.max.replace(tzinfo=UTC) if broker_lost_data else now - timedelta(seconds=self.lost_message_after_s)
        )
        abandoned: list[JobView] = []
        lost: list[JobView] = []
        for page in self._stale_pages(now, waiting_before, lost_mark):
            due_now: list[str] = []  # most lost jobs are due at once: their due time is set in one statement
            for job in page:
                queue = self.queue_of(job)
                if queue is None:
                    continue  # no tier serves it: `llm-router requeue --stale` reports it
                countdown = max(0.0, (aware(job.due_at) - now).total_seconds()) if job.due_at else 0.0
                self.publish(job, queue, countdown)
                if job.status == JobStatus.RUNNING:
                    # Queued again (its dead run's attempt closed as lost), it is not taken for lost at the next
                    # sweep. A worker may already have taken it over, on this very message: then it keeps it.
                    self.store.recover(job.id, countdown)
                    abandoned.append(job)
                    continue
                if countdown:
                    self.store.defer([job.id], countdown)  # due when its message is: not lost again before
                else:
                    due_now.append(job.id)
                lost.append(job)
            if due_now:
                self.store.defer(due_now, 0.0)
        if lost_mark is not None and self.broker_mark is not None and self._swept_every_page:
            self.broker_mark.recovered(lost_mark)
            self.redis.delete(RECOVERY_KEY)
        published = {job.id for job in abandoned + lost}
        stranded = [] if broker_lost_data else self._stranded(now, published)
        vanished = [] if broker_lost_data else self._vanished(now, published)
        if self.carry_on is not None:
            # A pipeline whose worker died between ending a step and starting the next goes on from here.
            for run_id in self.store.stalled_pipelines(now - timedelta(seconds=STALLED_PIPELINE_S)):
                self.carry_on(run_id)
        if self.resend_webhook is not None:
            # A webhook whose delivery was due (or had to be recorded) a lease ago: its message, or the process
            # sending it, was lost.
            for webhook in self.store.overdue_webhooks(self.held_after_s):
                log.warning("webhook %s sent again: its delivery is overdue", webhook.id)
                self.resend_webhook(webhook)
        sweep = Sweep(abandoned, lost, broker_lost_data, stranded, vanished)
        if sweep.count or broker_lost_data:
            self._note(sweep, now)
        if self.retention is not None and self.redis.set(PRUNED_KEY, now.isoformat(), nx=True, ex=PRUNE_EVERY_S):
            pruned = self.store.prune(
                now - timedelta(days=self.retention.days), results_only=self.retention.results_only
            )
            log.info("retention: pruned %s job(s) older than %g days", pruned.jobs, self.retention.days)
        return sweep

    def _stranded(self, now: datetime, published: set[str]) -> list[JobView]:
        """Publish again the jobs of messages held by a dead worker: handed out ``held_after_s`` ago, and every
        job of the message that still waits due at least that long ago."""
        if self.held is None:
            return []
        cutoff = now - timedelta(seconds=self.held_after_s)
        held = self.held.held_since(cutoff.timestamp())
        waiting = {job.id: job for job in self.store.waiting_among(sorted({i for ids in held.values() for i in ids}))}
        stranded: list[JobView] = []
        dropped: list[str] = []
        for tag, ids in held.items():
            jobs = [waiting[job_id] for job_id in ids if job_id in waiting]
            if not jobs or any(aware(job.due_at or job.created_at) > cutoff for job in jobs):
                continue  # nothing waits on it, or a countdown not long past: a live worker may still start it
            queues = [self.queue_of(job) for job in jobs]
            if None in queues:
                continue  # no tier serves one of its jobs: `llm-router requeue --stale` reports it
            for job, queue in zip(jobs, queues, strict=True):
                if queue is not None and job.id not in published:
                    self.publish(job, queue, 0.0)
                    self.store.defer([job.id], 0.0)
                    published.add(job.id)
                    stranded.append(job)
            dropped.append(tag)
        self.held.drop(dropped)
        return stranded

    def _vanished(self, now: datetime, published: set[str]) -> list[JobView]:
        """Publish again the jobs due twice ``held_after_s`` ago on a queue that holds no message, whose message
        no worker holds either: it is nowhere, and the queue is not a backlog they wait behind."""
        if self.held is None:
            return []
        cutoff = now - timedelta(seconds=2 * self.held_after_s)
        candidates = [
            job for queue in self.queues if self.held.empty(queue) for job in self.store.waiting_on(queue, cutoff)
        ]
        if not candidates:
            return []
        held = {job_id for ids in self.held.held_since(now.timestamp()).values() for job_id in ids}
        vanished: list[JobView] = []
        for job in candidates:
            queue = self.queue_of(job)
            if job.id in held or job.id in published or queue is None:
                continue
            self.publish(job, queue, 0.0)
            self.store.defer([job.id], 0.0)
            published.add(job.id)
            vanished.append(job)
        return vanished

    def _stale_pages(self, now: datetime, waiting_before: datetime, lost_mark: str | None) -> Iterator[list[JobView]]:
        """The lost jobs, a page at a time; between pages the lock is renewed, so a long sweep (a broker that
        lost thousands of messages) is never run by two sweepers at once. A sweeper that lost its lock (or
        died) stops; the recovery from a broker loss notes after each page how far it got, and the next
        sweeper goes on from there."""
        after = self._recovery_from(lost_mark)
        self._swept_every_page = False
        while True:
            page = self.store.stale(running_before=now, waiting_before=waiting_before, limit=SWEEP_PAGE, after=after)
            yield page
            if len(page) < SWEEP_PAGE:
                self._swept_every_page = True
                return
            after = (page[-1].created_at, page[-1].id)
            if lost_mark is not None:
                progress = {"mark": lost_mark, "created_at": after[0].isoformat(), "id": after[1]}
                self.redis.set(RECOVERY_KEY, json.dumps(progress), ex=PRUNE_EVERY_S)
            if not self.take_turn():
                return

    def _recovery_from(self, lost_mark: str | None) -> tuple[datetime, str] | None:
        """Where the recovery from this loss stopped, if a sweeper began it."""
        raw = self.redis.get(RECOVERY_KEY) if lost_mark is not None else None
        progress = json.loads(cast(bytes, raw)) if raw else None
        if not progress or progress.get("mark") != lost_mark:
            return None
        return datetime.fromisoformat(progress["created_at"]), str(progress["id"])

    def _note(self, sweep: Sweep, now: datetime) -> None:
        if sweep.broker_lost_data:
            log.warning("the broker lost its messages: %s waiting job(s) published again", len(sweep.lost))
        pipe = self.redis.pipeline(transaction=False)
        for job in sweep.abandoned:
            log.warning("job %s recovered: its worker %s stopped renewing its lease", job.id, job.lease_owner)
            if job.lease_owner:
                pipe.hset(DEAD_WORKERS_KEY, job.lease_owner, now.isoformat())
        for job in sweep.lost:
            log.warning("job %s recovered: its message was lost (%s)", job.id, job.status)
        for job in sweep.stranded:
            log.warning("job %s recovered: the worker that took its message died before starting it", job.id)
        for job in sweep.vanished:
            log.warning("job %s recovered: its message is on no queue and held by no worker", job.id)
        records = [
            json.dumps({"job": job.id, "status": job.status, "worker": job.lease_owner, "at": now.isoformat()})
            for job in sweep.abandoned + sweep.lost + sweep.stranded + sweep.vanished
        ]
        if records:
            pipe.lpush(RECOVERED_KEY, *records)
            pipe.ltrim(RECOVERED_KEY, 0, KEEP_RECOVERED - 1)
        pipe.execute()


def recoveries(client: redis.Redis) -> dict[str, Any]:
    """What the sweepers recovered lately, and the workers they found dead, for ``llm-router status``."""
    items = cast(list[bytes], client.lrange(RECOVERED_KEY, 0, KEEP_RECOVERED - 1))
    workers = cast(dict[bytes, bytes], client.hgetall(DEAD_WORKERS_KEY))
    recovered = [json.loads(item) for item in items]
    dead = {owner.decode(): at.decode() for owner, at in workers.items()}
    return {"recovered": recovered, "dead_workers": dead}
