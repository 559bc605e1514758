"""Every way a job enters the cluster: a request validated, planned (``broker/planning.py``), recorded and
published, one at a time (``submit``), many at once in the bulk lanes (``batch``), side by side
(``submit_together``, a comparison's jobs) or under a fixed id (``submit_step``, a pipeline's steps). The
Router, the gateway, comparisons, evaluations and pipelines (from the producer and from the worker that ends a
step) submit here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from llm_router.broker import tracing
from llm_router.broker.catalogue import Catalogue
from llm_router.broker.celery_app import RouterCelery
from llm_router.broker.jobs import Job
from llm_router.broker.packing import input_count, pack
from llm_router.broker.planning import Planned, plan
from llm_router.broker.publishing import EnqueueFailed, Outgoing, send_bulk, send_job, send_together
from llm_router.broker.routing import AUTO
from llm_router.broker.settings import Settings
from llm_router.broker.webhooks import allowed_networks, check_callback_url
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.records import UNSENT, JobStatus, aware
from llm_router.tasks.schemas import parse_request, web_address
from llm_router.tasks.store import JobStore, NewJob


@dataclass(frozen=True)
class BatchSubmission:
    batch_id: str
    jobs: dict[int, Job]  # by the request's position
    errors: dict[int, str]  # invalid requests, by position
    inserted: int  # records created now (0 for requests submitted before)


MAX_IDEMPOTENCY_KEY = 200
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1d2c0e-4b7a-5e39-9a51-2f0c8d7e6b14")  # batch and job ids from a batch's key


def _idempotency_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(
            f"idempotency_key: expected a string of 1 to {MAX_IDEMPOTENCY_KEY} characters", field="idempotency_key"
        )
    return value


REPUBLISH_AFTER_S = 10.0  # a step recorded but still unstarted this long ago: its message may be lost


def _span_attributes(planned: Planned) -> dict[str, str | None]:
    return {
        "llm_router.kind": planned.request.kind,
        "llm_router.tier": planned.route.tier,
        "llm_router.queue": planned.route.queue,
    }


class Submitter:
    """Validates, plans, records and publishes jobs for one client: its settings, catalogue and store, its
    Celery app (made when first needed), the queues live workers serve (not known: None), and how a job id
    becomes a ``Job``."""

    def __init__(
        self,
        settings: Settings,
        catalogue: Catalogue,
        store: JobStore,
        app: Callable[[], RouterCelery],
        served: Callable[[], frozenset[str] | None] = lambda: None,
        make_job: Callable[[str, str], Job] | None = None,
    ):
        self.settings, self.catalogue, self.store = settings, catalogue, store
        self._app, self._served = app, served
        self._make_job = make_job or (lambda job_id, kind: Job(store, job_id, kind))

    def prepare(self, request: dict[str, Any], *, tenant: str | None = None) -> Planned:
        """Validate, route and cache-key a request without submitting it; raises ``InvalidRequest``."""
        if not isinstance(request, dict):
            raise InvalidRequest(f"request: expected a dict, got {type(request).__name__}", field="request")
        parsed = parse_request({key: value for key, value in request.items() if value is not None})
        if parsed.callback_url is not None:
            check_callback_url(parsed.callback_url, allowed_networks(self.settings.webhook_allowed_networks))
        # tier="auto" goes only to a tier some live worker serves, when that is known.
        served = self._served() if parsed.tier == AUTO else None
        return plan(parsed, self.catalogue, tenant=tenant, served=served)

    def submit(self, request: dict[str, Any], *, tenant: str | None = None) -> Job:
        """Validate, record and enqueue one job of any kind. Nothing is written when validation fails.

        An identical request that succeeded within ``cache_ttl_s`` answers at once, without a message. With an
        ``idempotency_key`` (up to 200 characters), a submission that repeats one of the last
        ``idempotency_ttl_s`` gets the job of the first, with no second record and no second message.
        ``tenant`` (the HTTP gateway's) is recorded on the job and its usage, and scopes its cache and key."""
        if not isinstance(request, dict):
            raise InvalidRequest(f"request: expected a dict, got {type(request).__name__}", field="request")
        key = _idempotency_key(request.get("idempotency_key"))
        if key is not None and tenant is not None:
            key = f"{tenant}/{key}"  # one tenant's key never names another's job
        planned = self.prepare(
            {name: value for name, value in request.items() if name != "idempotency_key"}, tenant=tenant
        )
        with tracing.span("llm_router.submit", _span_attributes(planned)) as current:
            job = self._submit_planned(planned, key)
            tracing.note(current, **{"llm_router.job_id": job.id})
            return job

    def _submit_planned(self, planned: Planned, key: str | None) -> Job:
        parsed, stored, kind, job_id = planned.request, planned.stored, planned.request.kind, str(uuid.uuid4())
        if key is not None:
            earlier = self._job_for_key(key, kind, stored)
            if earlier is not None:
                if self.store.revive_unsent(earlier.id):  # its first message was refused: this one sends it
                    self._send(earlier.id, kind, planned.route.queue, input_count(stored), parsed.priority)
                return earlier
        job = planned.new_job(job_id, idempotency_key=key)
        # A keyed submission is recorded with its key even when the cache knows the answer (its worker answers
        # from the cache): the key must name one job.
        source = (
            self.store.find_cached(planned.cache_key, self.settings.cache_ttl_s)
            if parsed.use_cache and key is None
            else None
        )
        if source is not None:
            self.store.record_answered(job, source)
            return self._make_job(job_id, kind)
        if job_id not in self.store.submit([job]):
            # Another submission of this key was recorded between our look and our insert.
            earlier = self._job_for_key(key, kind, stored) if key is not None else None
            if earlier is None:
                raise InvalidRequest(f"idempotency_key: {key!r} is taken; submit again", field="idempotency_key")
            return earlier
        self._send(job_id, kind, planned.route.queue, input_count(stored), parsed.priority)
        return self._make_job(job_id, kind)

    def _send(self, job_id: str, kind: str, queue: str, inputs: int, priority: int | None) -> None:
        """Publish a recorded job's message; a message the broker refuses leaves the job failed, unsent (a
        submission again with the same idempotency key sends it then)."""
        try:
            self.publish(job_id, kind, queue, inputs, priority)
        except EnqueueFailed:
            self.store.fail([job_id], UNSENT)
            raise

    def _job_for_key(self, key: str, kind: str, request: dict[str, Any]) -> Job | None:
        """The job an earlier submission of ``key`` recorded, if the key still holds; the key of one that has
        outlived ``idempotency_ttl_s`` is freed. A key names one request: another is refused."""
        earlier = self.store.job_for_key(key)
        if earlier is None:
            return None
        oldest = datetime.now(UTC) - timedelta(seconds=self.settings.idempotency_ttl_s)
        if aware(earlier.created_at) < oldest and self.store.release_key(key, oldest):
            return None
        if earlier.kind != kind or earlier.request != request:
            raise InvalidRequest(
                f"idempotency_key: {key!r} was used for another request within the last "
                f"{self.settings.idempotency_ttl_s:g} s; give this one a new key",
                field="idempotency_key",
            )
        return self._make_job(earlier.id, earlier.kind)

    def batch(
        self,
        requests: list[dict[str, Any]],
        *,
        batch_id: str | None = None,
        job_ids: list[str] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        tenant: str | None = None,
    ) -> BatchSubmission:
        """Submit many jobs at once: each request is validated on its own, the valid ones are recorded in one
        transaction under ``batch_id`` and enqueued in the bulk lane of their tier, many jobs per message
        (workers take interactive jobs first). A request that is invalid is reported in ``errors`` (by
        position) and does not stop the others. With ``job_ids`` (deterministic ids), submitting the same
        requests again records nothing twice; jobs already recorded but still queued are published again.
        An ``idempotency_key`` derives the batch id and the job ids from itself: the same key names the same
        batch and jobs for as long as they are kept. With a ``callback_url``, the worker that ends the batch's
        last job POSTs the batch's counts there (signed; see ``llm_router.broker.webhooks``).
        """
        with tracing.span("llm_router.batch", {"llm_router.requests": len(requests)}):
            return self._batch(requests, batch_id, job_ids, idempotency_key, callback_url, tenant)

    def _batch(
        self,
        requests: list[dict[str, Any]],
        batch_id: str | None,
        job_ids: list[str] | None,
        idempotency_key: str | None,
        callback_url: str | None,
        tenant: str | None,
    ) -> BatchSubmission:
        key = _idempotency_key(idempotency_key)
        if key is not None and tenant is not None:
            key = f"{tenant}/{key}"
        if key is not None:
            batch_id = batch_id or str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, key))
            job_ids = job_ids or [str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{key}:{i}")) for i in range(len(requests))]
        batch_id = batch_id or str(uuid.uuid4())
        ids = job_ids or [str(uuid.uuid4()) for _ in requests]
        if len(ids) != len(requests):
            raise InvalidRequest("job_ids: one id per request is required", field="job_ids")
        if callback_url is not None:
            self._batch_webhook(batch_id, callback_url)
        rows: list[NewJob] = []
        positions: dict[str, int] = {}
        errors: dict[int, str] = {}
        jobs: dict[int, Job] = {}
        for position, (request, job_id) in enumerate(zip(requests, ids, strict=True)):
            try:
                if not isinstance(request, dict):
                    raise InvalidRequest(f"request: expected a JSON object, got {type(request).__name__}")
                marked = {**request, "batch_id": batch_id, **({"batch_callback": True} if callback_url else {})}
                planned = self.prepare(marked, tenant=tenant)
                if planned.request.priority is not None:
                    raise InvalidRequest(
                        "priority: orders the interactive lane; a batch's jobs run in the bulk lane, which has none",
                        field="priority",
                    )
            except InvalidRequest as exc:
                errors[position] = str(exc)
                continue
            rows.append(planned.new_job(job_id, bulk=True))
            positions[job_id] = position
            jobs[position] = self._make_job(job_id, planned.request.kind)
        inserted = self.store.submit(rows)
        known = self.store.statuses([row.job_id for row in rows if row.job_id not in inserted])
        due = []
        for row in rows:
            before = known.get(row.job_id)
            if before is not None and (before.kind != row.kind or before.request != row.request):
                # A deterministic id already names another request: answering with its result would be wrong.
                errors[positions[row.job_id]] = (
                    f"job_ids: job {row.job_id} is already recorded with another request; give this one a new id"
                )
                del jobs[positions[row.job_id]]
            elif row.job_id in inserted or (before is not None and before.status == JobStatus.QUEUED):
                due.append(row)
        for packet in pack(due, self.settings.bulk_message_jobs, self.settings.bulk_message_inputs):
            self.publish_many(packet.job_ids, packet.kind, packet.queue, packet.inputs)
        return BatchSubmission(batch_id=batch_id, jobs=jobs, errors=errors, inserted=len(inserted))

    def _batch_webhook(self, batch_id: str, callback_url: str) -> None:
        """Record the batch as a run that holds its webhook (once: a batch submitted again keeps its run)."""
        try:
            url = web_address(callback_url)
        except ValueError as exc:
            raise InvalidRequest(f"callback_url: {exc}", field="callback_url") from None
        check_callback_url(url, allowed_networks(self.settings.webhook_allowed_networks))
        self.store.create_run(batch_id, "batch", batch_id, [], {"callback_url": url}, if_absent=True)

    def publish(self, job_id: str, kind: str, queue: str, inputs: int, priority: int | None = None) -> None:
        try:
            send_job(self._app(), job_id, kind, queue, inputs, priority=priority)
        except Exception as exc:  # kombu and the transports raise many kinds; all mean "not enqueued"
            raise EnqueueFailed(f"job {job_id} could not be enqueued on {self.settings.safe_broker_url()}") from exc

    def publish_many(self, job_ids: list[str], kind: str, queue: str, inputs: int) -> None:
        if len(job_ids) == 1:
            self.publish(job_ids[0], kind, queue, inputs)
            return
        try:
            send_bulk(self._app(), job_ids, kind, queue, inputs)
        except Exception as exc:
            raise EnqueueFailed(
                f"{len(job_ids)} jobs from {job_ids[0]} could not be enqueued on {self.settings.safe_broker_url()}"
            ) from exc

    def submit_step(self, job_id: str, planned: Planned, run_step: int) -> None:
        """Record a job under a fixed id (a pipeline's step) once, and publish it when it was recorded now or
        when its record still waits unstarted ``REPUBLISH_AFTER_S`` after it was made (its message may be
        lost): any process may call this again for the same step. A refused message raises ``EnqueueFailed``
        and leaves the step queued, for the sweeper's next look at its stalled run."""
        inserted = self.store.submit([planned.new_job(job_id, run_step=run_step)])
        if inserted or self._unstarted(job_id):
            self.publish(job_id, planned.request.kind, planned.route.queue, input_count(planned.stored))

    def _unstarted(self, job_id: str) -> bool:
        job = self.store.get(job_id)
        if job is None or job.status != JobStatus.QUEUED or job.attempts:
            return False
        return aware(job.created_at) < self.store.database_now() - timedelta(seconds=REPUBLISH_AFTER_S)

    def submit_together(self, jobs: list[tuple[str, Planned]]) -> None:
        """Record planned jobs and publish them side by side, one message each (a comparison's jobs)."""
        self.store.submit([planned.new_job(job_id) for job_id, planned in jobs])
        if not jobs:
            return
        outgoing = [
            Outgoing(job_id, planned.request.kind, planned.route.queue, input_count(planned.stored))
            for job_id, planned in jobs
        ]
        try:
            send_together(self._app(), outgoing)
        except Exception as exc:  # all mean "not enqueued"
            self.store.fail([job_id for job_id, _ in jobs], UNSENT)
            raise EnqueueFailed(
                f"{len(jobs)} jobs from {jobs[0][0]} could not be enqueued on {self.settings.safe_broker_url()}"
            ) from exc
