"""``Router``: submits generation, embedding and classification jobs, batches, comparisons, evaluations and
pipelines, and asks the Hub.

Submitting validates the request, routes it to a tier, writes the job row ``queued`` and publishes a
message that carries only the job id. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from llm_router.broker.catalogue import Catalogue, load_catalogue
from llm_router.broker.celery_app import RouterCelery, create_app
from llm_router.broker.compare import Comparison, compare
from llm_router.broker.consumers import ServedQueues, unserved_note
from llm_router.broker.evaluation import Evaluation, evaluate, load_cases
from llm_router.broker.hub import Hub, ModelDetails, ModelSummary, SearchQuery, SortKey
from llm_router.broker.jobs import Job, UnknownJob, cancel_jobs
from llm_router.broker.notifications import DoneNotices
from llm_router.broker.packing import input_count, pack
from llm_router.broker.pipeline_runs import PipelineResult, read_pipeline, start_pipeline
from llm_router.broker.publishing import recovery_queue, send_again, send_bulk, send_job
from llm_router.broker.queues import queue_names
from llm_router.broker.routing import AUTO, Route, queue_for_tier, route
from llm_router.broker.settings import Settings
from llm_router.broker.webhooks import allowed_networks, check_callback_url
from llm_router.tasks.cache import cache_key
from llm_router.tasks.cases import Case
from llm_router.tasks.database import check_schema, make_engine, upgrade
from llm_router.tasks.errors import (
    InvalidRequest,
    RouterError,
)
from llm_router.tasks.records import UNSENT, WAITING_STATUSES, JobStatus, RunStatus, aware
from llm_router.tasks.schemas import (
    ClassifyRequest,
    EmbedRequest,
    GenerateRequest,
    Kind,
    parse_request,
    web_address,
)
from llm_router.tasks.store import Cancellation, JobStore, JobView, NewJob, WebhookView


class EnqueueFailed(RouterError):
    """The job was recorded but the broker refused it; the job is marked failed with this reason."""


@dataclass(frozen=True)
class BatchSubmission:
    batch_id: str
    jobs: dict[int, Job]  # by the request's position
    errors: dict[int, str]  # invalid requests, by position
    inserted: int  # records created now (0 for requests submitted before)


@dataclass(frozen=True)
class Requeue:
    requeued: list[JobView]  # published again (or, in a dry run, that would be)
    unroutable: list[JobView]  # lost, but on a queue this catalogue no longer serves: left for an operator


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


class Router:
    """Submit generation, embedding and classification jobs to the cluster.

    ``Router()`` reads its settings from the environment; with none set it uses the embedded defaults
    (a SQLite database and a filesystem broker under ``./var/``) and creates the schema itself.
    """

    def __init__(
        self, settings: Settings | None = None, *, catalogue: Catalogue | None = None, app: RouterCelery | None = None
    ):
        self.settings = settings or Settings()
        self.catalogue = catalogue or load_catalogue(self.settings.config)
        self._app = app
        self._notices: DoneNotices | None = None
        self._served: ServedQueues | None = None
        engine = make_engine(
            self.settings.resolved_database_url, sqlite_busy_timeout_s=self.settings.sqlite_busy_timeout_s
        )
        if engine.dialect.name == "sqlite":
            upgrade(engine)  # embedded mode: nobody else runs migrations (a no-op when current)
        else:
            check_schema(engine)  # a fleet's database is migrated by `llm-router db upgrade`: say so, in one line
        self.store = JobStore(engine)

    def close(self) -> None:
        """Release broker and database connections (the Router may be used again afterwards)."""
        if self._app is not None:
            self._app.close()
        if self._notices is not None:
            self._notices.close()
            self._notices = None
        self.store.engine.dispose()

    def _job(self, job_id: str, kind: str) -> Job:
        notices, poll_s = self.notices, self.settings.wait_poll_s
        return Job(self.store, job_id, kind, poll_s, notices, self.cancel_jobs, self.waiting_note)

    @property
    def notices(self) -> DoneNotices | None:
        """This producer's Redis client for wake-ups and shared state (None without Redis)."""
        redis_url = self.settings.resolved_redis_url
        if self._notices is None and redis_url:
            self._notices = DoneNotices(redis_url)
        return self._notices

    def served_queues(self) -> frozenset[str] | None:
        """The catalogue's queues some live worker consumes (None: not known without Redis)."""
        if self._served is None:
            self._served = ServedQueues(self.notices.client if self.notices is not None else None)
        return self._served.served(queue_names(self.catalogue.ordered_tiers))

    def unserved(self, request: dict[str, Any]) -> str | None:
        """The queue ``request`` would go to when it is known that no live worker consumes it; None when one
        does or nobody can tell. Raises ``InvalidRequest``."""
        _, planned = self.prepare(request)
        served = self.served_queues()
        return planned.queue if served is not None and planned.queue not in served else None

    def waiting_note(self, view: JobView) -> str:
        """ "; no worker serves queue X" for a waiting job whose queue nobody consumes, else nothing."""
        if view.status not in WAITING_STATUSES or not view.queue:
            return ""
        served = self.served_queues()
        return f"; {unserved_note(view.queue)}" if served is not None and view.queue not in served else ""

    def cancel_jobs(self, job_ids: list[str]) -> Cancellation:
        """Cancel these jobs (see ``Job.cancel``)."""
        return cancel_jobs(self.store, self.notices, job_ids)

    def cancel_batch(self, batch_id: str) -> Cancellation:
        """Cancel the unfinished jobs of a batch (or run); those that ended keep their results."""
        return self.cancel_jobs(self.store.unfinished_of_batch(batch_id))

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def app(self) -> RouterCelery:
        if self._app is None:
            self._app = create_app(self.settings, self.catalogue)
        return self._app

    # ---- the Hub ------------------------------------------------------------------------------------------

    @property
    def hub(self) -> Hub:
        return Hub.from_settings(self.settings)

    def search_models(
        self,
        task: str | None = None,
        *,
        language: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        author: str | None = None,
        search: str | None = None,
        sort: SortKey = "downloads",
        limit: int = 10,
        provider: str | None = None,
    ) -> list[ModelSummary]:
        """The guide's ``searchModels``: Hub models by task (pipeline tag), language, tags and author, most
        downloaded (or liked, trending, newest, last modified) first; ``provider`` keeps those an Inference
        Provider serves (``hf-inference``, another's name, or ``all``)."""
        query = SearchQuery(task, language, tuple(tags), author, search, sort, limit, provider)
        return self.hub.search(query)

    def model_info(self, model_id: str, revision: str | None = None) -> ModelDetails:
        """The guide's ``getModelInfo``, with the tiers of this catalogue that run the model."""
        details = self.hub.info(model_id, revision)
        return replace(details, tiers=self.catalogue.tiers_using(model_id))

    def download_model(self, model_id: str, revision: str | None = None, *, progress: bool = False) -> Path:
        """The guide's ``downloadModel``: the model's files in the Hugging Face cache, where a catalogue
        entry with ``provider = "local"`` then loads it offline. Returns the snapshot's folder."""
        return self.hub.download(model_id, revision, progress=progress)

    # ---- the guide's model tools -----------------------------------------------------------------------

    def compare(
        self,
        models: list[str] | str,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        kind: Kind = "generate",
        timeout: float = 120.0,
        **options: Any,
    ) -> Comparison:
        """The guide's ``compareModels``: the same prompt (or messages; for embed and classify, the input
        text) on each model at once, one job per model, recorded as a run. Returns when every job is final or
        ``timeout`` has passed; an unknown or failing model is a row with its error. Options (``max_tokens``,
        ``temperature``, ...) apply to every model; no model falls back to another."""
        request: dict[str, Any] = {"fallback": "none", **options}
        if kind == "generate":
            request.update({"prompt": prompt, "messages": messages})
        else:
            request["input"] = options.get("input", prompt)
        request = {name: value for name, value in request.items() if value is not None}
        return compare(self, models, kind, request, timeout_s=timeout)

    def evaluate(
        self,
        models: list[str] | str,
        cases: str | Path | list[Case],
        *,
        tier: str | None = None,
        concurrency: int | None = None,
        timeout: float = 600.0,
    ) -> Evaluation:
        """The guide's ``testModel`` and ``generateTestReport``: each case (from a .yaml or .jsonl file, or
        parsed ``Case`` objects) on each model, through the bulk lanes, at most ``concurrency`` jobs
        unfinished at once; one report per model. Bad input raises ``InvalidRequest``, recording nothing."""
        if isinstance(cases, (str, Path)):
            suite, parsed = Path(cases).stem, load_cases(Path(cases))
        else:
            suite, parsed = "cases", cases
        return evaluate(self, models, parsed, suite=suite, tier=tier, concurrency=concurrency, timeout_s=timeout)

    def pipeline(self, text: str, *, name: str = "reply", timeout: float | None = 120.0) -> PipelineResult:
        """The guide's ``processText`` (pipeline "reply"), or another pipeline the catalogue declares: a chain
        of jobs that the workers carry on step by step. Waits until the run ends or ``timeout`` passes
        (``None``: returns at once) and returns where it stands; ``get_pipeline(run_id)`` reads it again."""
        run_id = start_pipeline(self.store, self.catalogue, self._publish, name, text)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(0.01, self.settings.wait_poll_s)
        while True:
            result = self.get_pipeline(run_id)
            if result.status != RunStatus.RUNNING or deadline is None or time.monotonic() >= deadline:
                return result
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 1.5, max(self.settings.wait_poll_s, 0.25))

    def get_pipeline(self, run_id: str) -> PipelineResult:
        result = read_pipeline(self.store, run_id)
        if result is None:
            raise UnknownJob(f"run_id: no pipeline run {run_id}")
        return result

    # ---- the three kinds ---------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        model: str | None = None,
        tier: str | None = None,
        **options: Any,
    ) -> Job:
        request: dict[str, Any] = {
            "kind": "generate",
            "prompt": prompt,
            "messages": messages,
            "model": model,
            "tier": tier,
        }
        return self.submit({**request, **options})

    def embed(
        self, input: str | list[str], *, model: str | None = None, tier: str | None = None, **options: Any
    ) -> Job:
        return self.submit({"kind": "embed", "input": input, "model": model, "tier": tier, **options})

    def classify(
        self, input: str | list[str], *, model: str | None = None, tier: str | None = None, **options: Any
    ) -> Job:
        return self.submit({"kind": "classify", "input": input, "model": model, "tier": tier, **options})

    # ---- the general path --------------------------------------------------------------------------------

    def prepare(self, request: dict[str, Any]) -> tuple[GenerateRequest | EmbedRequest | ClassifyRequest, Route]:
        """Validate and route a request without submitting it; raises ``InvalidRequest``."""
        if not isinstance(request, dict):
            raise InvalidRequest(f"request: expected a dict, got {type(request).__name__}", field="request")
        parsed = parse_request({key: value for key, value in request.items() if value is not None})
        if parsed.callback_url is not None:
            check_callback_url(parsed.callback_url, allowed_networks(self.settings.webhook_allowed_networks))
        # tier="auto" goes only to a tier some live worker serves, when that is known.
        served = self.served_queues() if parsed.tier == AUTO else None
        return parsed, route(parsed, self.catalogue, served)

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
        parsed, planned = self.prepare({name: value for name, value in request.items() if name != "idempotency_key"})
        stored = parsed.model_dump(mode="json", exclude_none=True)
        kind, cache, job_id = parsed.kind, cache_key(parsed, planned.tier, tenant), str(uuid.uuid4())
        if key is not None:
            earlier = self._job_for_key(key, kind, stored)
            if earlier is not None:
                if self.store.revive_unsent(earlier.id):  # its first message was refused: this one sends it
                    self._send(earlier.id, kind, planned.queue, input_count(stored), parsed.priority)
                return earlier
        job = NewJob(job_id, kind, stored, planned.tier, planned.queue, cache, idempotency_key=key, tenant=tenant)
        # A keyed submission is recorded with its key even when the cache knows the answer (its worker answers
        # from the cache): the key must name one job.
        source = self.store.find_cached(cache, self.settings.cache_ttl_s) if parsed.use_cache and key is None else None
        if source is not None:
            self.store.record_answered(job, source)
            return self._job(job_id, kind)
        if job_id not in self.store.submit([job]):
            # Another submission of this key was recorded between our look and our insert.
            earlier = self._job_for_key(key, kind, stored) if key is not None else None
            if earlier is None:
                raise InvalidRequest(f"idempotency_key: {key!r} is taken; submit again", field="idempotency_key")
            return earlier
        self._send(job_id, kind, planned.queue, input_count(stored), parsed.priority)
        return self._job(job_id, kind)

    def _send(self, job_id: str, kind: str, queue: str, inputs: int, priority: int | None) -> None:
        """Publish a recorded job's message; a message the broker refuses leaves the job failed, unsent (a
        submission again with the same idempotency key sends it then)."""
        try:
            self._publish(job_id, kind, queue, inputs, priority)
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
        return self._job(earlier.id, earlier.kind)

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
                parsed, planned = self.prepare(marked)
                if parsed.priority is not None:
                    raise InvalidRequest(
                        "priority: orders the interactive lane; a batch's jobs run in the bulk lane, which has none",
                        field="priority",
                    )
            except InvalidRequest as exc:
                errors[position] = str(exc)
                continue
            stored = parsed.model_dump(mode="json", exclude_none=True)
            queue = queue_for_tier(planned.tier, "bulk")
            key = cache_key(parsed, planned.tier, tenant)
            rows.append(NewJob(job_id, parsed.kind, stored, planned.tier, queue, key, tenant=tenant))
            positions[job_id] = position
            jobs[position] = self._job(job_id, parsed.kind)
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
            self._publish_many(packet.job_ids, packet.kind, packet.queue, packet.inputs)
        return BatchSubmission(batch_id=batch_id, jobs=jobs, errors=errors, inserted=len(inserted))

    def _batch_webhook(self, batch_id: str, callback_url: str) -> None:
        """Record the batch as a run that holds its webhook (once: a batch submitted again keeps its run)."""
        try:
            url = web_address(callback_url)
        except ValueError as exc:
            raise InvalidRequest(f"callback_url: {exc}", field="callback_url") from None
        check_callback_url(url, allowed_networks(self.settings.webhook_allowed_networks))
        self.store.create_run(batch_id, "batch", batch_id, [], {"callback_url": url}, if_absent=True)

    def webhooks(self, job_or_batch_id: str) -> list[WebhookView]:
        """The completion webhook of a job or batch, with each delivery attempt (none if it asked for none)."""
        return self.store.webhooks_of(f"job:{job_or_batch_id}") + self.store.webhooks_of(f"batch:{job_or_batch_id}")

    def batch_progress(self, batch_id: str) -> dict[str, int]:
        """Jobs of a batch by status."""
        return self.store.batch_counts(batch_id)

    def _publish(self, job_id: str, kind: str, queue: str, inputs: int, priority: int | None = None) -> None:
        try:
            send_job(self.app, job_id, kind, queue, inputs, priority=priority)
        except Exception as exc:  # kombu and the transports raise many kinds; all mean "not enqueued"
            raise EnqueueFailed(f"job {job_id} could not be enqueued on {self.settings.safe_broker_url()}") from exc

    def _publish_many(self, job_ids: list[str], kind: str, queue: str, inputs: int) -> None:
        if len(job_ids) == 1:
            self._publish(job_ids[0], kind, queue, inputs)
            return
        try:
            send_bulk(self.app, job_ids, kind, queue, inputs)
        except Exception as exc:
            raise EnqueueFailed(
                f"{len(job_ids)} jobs from {job_ids[0]} could not be enqueued on {self.settings.safe_broker_url()}"
            ) from exc

    def requeue_stale(self, older_than_s: float, *, dry_run: bool = False) -> Requeue:
        """Publish again every job that is lost since ``older_than_s`` at least: running under a lease its
        worker stopped renewing (it died), or queued or retrying with its message due that long ago (a broker
        lost it). The database is the source of truth. A job that a live worker runs, or that waits for a
        retry's or deferral's countdown, is left alone; a job that ends meanwhile is not run twice: a worker
        skips a message for a job in a final state or under another live worker's lease. A job whose queue
        this catalogue does not serve (its tier was renamed or removed) is reported, not published: no
        worker would ever take it."""
        requeued: list[JobView] = []
        unroutable: list[JobView] = []
        # Leases and due times are the database clock's: judged by it, whatever this host's clock says.
        for job in self.store.stale(self.store.database_now() - timedelta(seconds=older_than_s)):
            queue = recovery_queue(job, self.catalogue)
            if queue is None:
                unroutable.append(job)
                continue
            requeued.append(job)
            if dry_run:
                continue
            try:
                send_again(self.app, job, queue)
            except Exception as exc:
                self.store.defer([done.id for done in requeued[:-1]], 0.0)
                raise EnqueueFailed(f"job {job.id} could not be enqueued on {self.settings.safe_broker_url()}") from exc
        if not dry_run:
            self.store.defer([job.id for job in requeued], 0.0)  # due now: the next requeue leaves them be
        return Requeue(requeued, unroutable)

    def get_when_recorded(self, job_id: str, timeout: float = 30.0) -> Job:
        """``get`` for a job that a worker records itself (a message from another producer)."""
        deadline = time.monotonic() + timeout
        while self.store.get(job_id) is None:
            if time.monotonic() > deadline:
                raise UnknownJob(f"job_id: no job {job_id} after {timeout:g} s")
            time.sleep(self.settings.wait_poll_s)
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        view = self.store.get(job_id)
        if view is None:
            raise UnknownJob(f"job_id: no job {job_id}")
        return self._job(job_id, view.kind)
