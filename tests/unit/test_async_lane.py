"""Which jobs the remote pool's event loop runs itself, and which it leaves to the threads' path."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from llm_router.broker.catalogue import Catalogue
from llm_router.broker.transports import Taken
from llm_router.tasks.records import JobStatus
from llm_router.tasks.store import JobView
from llm_router.workers.async_pool.lane import fresh_job, loop_run
from llm_router.workers.draining import Drained, seconds_until_due

CATALOGUE = Catalogue.model_validate(
    {
        "default_tier": "api",
        "tier_order": ["api"],
        "tiers": {"api": {"pool": "remote", "generate": ["org/chat", "org/other"], "embed": ["org/tei"]}},
        "models": {
            "org/chat": {"provider": "openai", "base_url": "http://127.0.0.1:1"},
            "org/other": {"provider": "openai", "base_url": "http://127.0.0.1:1"},
            "org/tei": {"provider": "tei", "base_url": "http://127.0.0.1:1"},
        },
    }
)
JOB_ID = str(uuid.uuid4())


def _drained(args: list[Any], kwargs: dict[str, Any], kind: str = "generate") -> Drained:
    taken = Taken("tag", "api", {"task": f"llm_router.{kind}"}, "application/json", b"[]")
    return Drained(kind, tuple(args), kwargs, "task-id", taken)


def _job(status: JobStatus = JobStatus.QUEUED, **changes: Any) -> JobView:
    request = changes.pop("request", {"prompt": "hello"})
    fields: dict[str, Any] = {
        "id": JOB_ID,
        "kind": "generate",
        "status": status,
        "tier": "api",
        "queue": "api",
        "requested_model": None,
        "model_used": None,
        "request": request,
        "result": None,
        "error": None,
        "latency_ms": None,
        "cached": False,
        "attempts": 0,
        "batch_id": None,
        "created_at": datetime.now(UTC),
        "started_at": None,
        "finished_at": None,
    }
    return JobView(**{**fields, **changes})


def test_the_loop_runs_a_fresh_message_of_one_recorded_job() -> None:
    message = fresh_job(_drained([JOB_ID], {}))
    assert message is not None and message.job_id == JOB_ID


@pytest.mark.parametrize(
    ("args", "kwargs", "why"),
    [
        ([], {"job_ids": [JOB_ID, str(uuid.uuid4())]}, "a bulk message"),
        ([], {"job_id": JOB_ID, "cursor": {"position": 0, "retry": 1}}, "a retry's message resumes a cursor"),
        ([], {"job_id": JOB_ID, "cursor": {"position": 1, "retry": 0}}, "a fallback's message resumes a cursor"),
        ([], {"job_id": JOB_ID, "request": {"prompt": "hi"}}, "a message that carries its request"),
        (["not-a-uuid"], {}, "a bad message, recorded there"),
    ],
)
def test_other_messages_run_the_threads_path(args: list[Any], kwargs: dict[str, Any], why: str) -> None:
    assert fresh_job(_drained(args, kwargs)) is None, why


def test_a_waiting_job_runs_its_chains_first_model_on_the_loop() -> None:
    run = loop_run(_job(), None, "generate", CATALOGUE)
    assert run is not None and run.model == "org/chat" and run.route.tier == "api"
    named = loop_run(_job(request={"prompt": "hi", "model": "org/other"}), None, "generate", CATALOGUE)
    assert named is not None and named.model == "org/other"


@pytest.mark.parametrize(
    ("job", "why"),
    [
        (_job(JobStatus.RUNNING), "a redelivery of a running job: its lease decides"),
        (_job(JobStatus.SUCCEEDED), "a job that ended: its redelivery is ignored there"),
        (_job(tier_hops=1), "a job a tier fallback moved"),
        (_job(request={"prompt": "hi", "stream": True}), "a stream"),
        (_job(request={"prompt": "hi", "deadline_s": 30}), "a deadline to judge on the database's clock"),
        (_job(request={"prompt": "hi", "model": "org/gone"}), "a model the catalogue no longer has"),
        (_job(tier="gone"), "a tier the catalogue no longer has"),
        (_job(request={"prompt": ""}), "a request that no longer parses"),
    ],
)
def test_jobs_the_threads_path_runs(job: JobView, why: str) -> None:
    assert loop_run(job, None, "generate", CATALOGUE) is None, why


def test_a_job_with_an_answer_in_the_cache_is_answered_there() -> None:
    assert loop_run(_job(), _job(JobStatus.SUCCEEDED, id=str(uuid.uuid4())), "generate", CATALOGUE) is None


def test_a_message_is_held_until_its_eta() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert seconds_until_due({"eta": "2026-01-01T12:00:02.500000+00:00"}, now) == 2.5
    assert seconds_until_due({"eta": "2026-01-01T11:59:00+00:00"}, now) == 0.0
    assert seconds_until_due({}, now) == 0.0
    assert seconds_until_due({"eta": "not a time"}, now) == 0.0  # run rather than held for ever
