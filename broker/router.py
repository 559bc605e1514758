"""``Router``: submits generation, embedding and classification jobs, batches, comparisons, evaluations and
pipelines, and asks the Hub.

Submitting validates the request, routes it to a tier, writes the job row ``queued`` and publishes a
message that carries only the job id. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from llm_router.broker import tracing
from llm_router.broker.catalogue import Catalogue, load_catalogue
from llm_router.broker.celery_app import RouterCelery, create_app
from llm_router.broker.compare import Comparison, compare
from llm_router.broker.consumers import ServedQueues, unserved_note
from llm_router.broker.evaluation import Evaluation, evaluate, load_cases
from llm_router.broker.hub import Hub, ModelDetails, ModelSummary, SearchQuery, SortKey
from llm_router.broker.jobs import Job, UnknownJob, cancel_jobs
from llm_router.broker.notifications import DoneNotices
from llm_router.broker.pipeline_runs import PipelineResult, read_pipeline, start_pipeline
from llm_router.broker.planning import Planned
from llm_router.broker.publishing import Requeue, requeue_stale
from llm_router.broker.queues import queue_names
from llm_router.broker.settings import Settings
from llm_router.broker.submitting import BatchSubmission, Submitter
from llm_router.tasks.cases import Case
from llm_router.tasks.database import check_schema, make_engine, upgrade
from llm_router.tasks.records import WAITING_STATUSES, RunStatus
from llm_router.tasks.schemas import (
    Kind,
)
from llm_router.tasks.store import Cancellation, JobStore, JobView, WebhookView


class Router:
    """Submit generation, embedding and classification jobs to the cluster.

    ``Router()`` reads its settings from the environment; with none set it uses the embedded defaults
    (a SQLite database and a filesystem broker under ``./var/``) and creates the schema itself.
    """

    def __init__(
        self, settings: Settings | None = None, *, catalogue: Catalogue | None = None, app: RouterCelery | None = None
    ):
        self.settings = settings or Settings()
        tracing.configure("llm-router-producer")  # when tracing is on and the application set up none
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
        self.submitter = Submitter(
            self.settings, self.catalogue, self.store, lambda: self.app, self.served_queues, self._job
        )

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
        planned = self.prepare(request).route
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
        return compare(self.submitter, models, kind, request, timeout_s=timeout)

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
        return evaluate(
            self.submitter, models, parsed, suite=suite, tier=tier, concurrency=concurrency, timeout_s=timeout
        )

    def pipeline(self, text: str, *, name: str = "reply", timeout: float | None = 120.0) -> PipelineResult:
        """The guide's ``processText`` (pipeline "reply"), or another pipeline the catalogue declares: a chain
        of jobs that the workers carry on step by step. Waits until the run ends or ``timeout`` passes
        (``None``: returns at once) and returns where it stands; ``get_pipeline(run_id)`` reads it again."""
        run_id = start_pipeline(self.submitter, name, text)
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

    # ---- the general path: one submitter ---------------------------------------------------------------

    def prepare(self, request: dict[str, Any], *, tenant: str | None = None) -> Planned:
        """Validate, route and cache-key a request without submitting it; raises ``InvalidRequest``."""
        return self.submitter.prepare(request, tenant=tenant)

    def submit(self, request: dict[str, Any], *, tenant: str | None = None) -> Job:
        """Validate, record and enqueue one job of any kind (see ``Submitter.submit``): an identical request
        answered within ``cache_ttl_s`` answers at once; an ``idempotency_key`` names one job."""
        return self.submitter.submit(request, tenant=tenant)

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
        """Submit many jobs at once in the bulk lanes, each request validated on its own (see
        ``Submitter.batch``)."""
        return self.submitter.batch(
            requests,
            batch_id=batch_id,
            job_ids=job_ids,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            tenant=tenant,
        )

    def webhooks(self, job_or_batch_id: str) -> list[WebhookView]:
        """The completion webhook of a job or batch, with each delivery attempt (none if it asked for none)."""
        return self.store.webhooks_of(f"job:{job_or_batch_id}") + self.store.webhooks_of(f"batch:{job_or_batch_id}")

    def batch_progress(self, batch_id: str) -> dict[str, int]:
        """Jobs of a batch by status."""
        return self.store.batch_counts(batch_id)

    def requeue_stale(self, older_than_s: float, *, dry_run: bool = False) -> Requeue:
        """Publish again every job lost since ``older_than_s`` at least (see ``publishing.requeue_stale``)."""
        return requeue_stale(self.app, self.store, self.catalogue, older_than_s, dry_run=dry_run)

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
