"""A job's hot writes on PostgreSQL: recording a submission on the driver's own connection, starting an
attempt and recording a success as one statement each; each leaves exactly the rows that the session's
statements and transactions (SQLite's way) leave."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from llm_router.tasks.database import make_engine
from llm_router.tasks.records import AttemptRecord, AttemptStatus, Base, JobRecord, JobStatus, UsageRecord
from llm_router.tasks.schemas import GenerateResult, Usage
from llm_router.tasks.store import AttemptSpec, Busy, JobStore, Lease, Success
from llm_router.tasks.store.base import NewJob
from tests.conftest import fresh_database
from tests.support.store import start_one, submit_one, succeed_one

VOLATILE = {"id", "job_id", "created_at", "started_at", "finished_at", "lease_until", "latency_ms", "result"}


def lease(owner: str, alive: bool = True, seconds: float = 60.0) -> Lease:
    return Lease(owner=owner, seconds=seconds, alive=lambda _: alive)


@pytest.fixture(scope="module")
def stores() -> Iterator[tuple[JobStore, JobStore]]:
    """The same database through the one-statement writes and through the transactions."""
    with fresh_database() as url:
        one, several = JobStore(make_engine(url)), JobStore(make_engine(url))
        several.one_statement_writes = False
        several.driver_insert = several.driver_insert_many = None
        assert one.one_statement_writes and one.driver_insert is not None and one.driver_insert_many is not None
        yield one, several
        one.engine.dispose()
        several.engine.dispose()


def new_job(store: JobStore) -> str:
    job_id = str(uuid.uuid4())
    submit_one(store, job_id=job_id, kind="generate", request={"prompt": "hi"}, tier="fast", queue="fast")
    return job_id


def rows(store: JobStore, job_id: str) -> dict[str, Any]:
    """The job's rows, without the values that differ from one run to the next."""
    with store.session() as session:
        job = session.get(JobRecord, job_id)
        attempts = session.scalars(select(AttemptRecord).where(AttemptRecord.job_id == job_id))
        usage = session.scalars(select(UsageRecord).where(UsageRecord.job_id == job_id))

        def columns(record: Any) -> dict[str, Any]:
            return {c.name: getattr(record, c.name) for c in record.__table__.columns if c.name not in VOLATILE}

        return {
            "job": columns(job),
            "attempts": sorted((columns(a) for a in attempts), key=lambda a: a["number"]),
            "usage": [columns(u) for u in usage],
        }


def test_a_submission_recorded_on_the_drivers_connection_leaves_the_sessions_row(
    stores: tuple[JobStore, JobStore],
) -> None:
    request = {"kind": "generate", "prompt": 'héllo \u2603 "quoted"', "model": "m", "batch_id": "b1", "stop": ["\n"]}
    recorded = []
    for store in stores:
        job_id = str(uuid.uuid4())
        common: dict[str, Any] = {"kind": "generate", "request": request, "tier": "fast", "queue": "fast"}
        key = f"key-{job_id}"
        assert submit_one(store, job_id=job_id, **common, cache_key="c" * 64, idempotency_key=key, tenant="acme")
        assert not submit_one(store, job_id=job_id, **common), "a taken id is refused"
        assert not submit_one(store, job_id=str(uuid.uuid4()), **common, idempotency_key=key), "so is a taken key"
        with store.session() as session:
            job = session.get(JobRecord, job_id)
            assert job is not None and job.created_at.tzinfo is not None
            columns = {c.name: getattr(job, c.name) for c in JobRecord.__table__.columns}
        assert columns["request"] == request and columns["idempotency_key"] == key
        recorded.append(
            {name: value for name, value in columns.items() if name not in {"id", "created_at", "idempotency_key"}}
        )
    assert recorded[0] == recorded[1]


def test_a_batch_recorded_through_the_drivers_pipeline_leaves_the_sessions_rows(
    stores: tuple[JobStore, JobStore],
) -> None:
    recorded = []
    for store in stores:
        ids = [str(uuid.uuid4()) for _ in range(3)]
        jobs = [
            NewJob(
                job_id=job_id,
                kind="embed",
                request={"input": [f"text {n} é"], "batch_id": "b2"},
                tier="fast",
                queue="fast.bulk",
                cache_key=f"{n:064d}",
                run_step=n,
                tenant="acme",
            )
            for n, job_id in enumerate(ids)
        ]
        assert store.submit(jobs[:1]) == {ids[0]}
        assert store.submit(jobs) == set(ids[1:]), "an id already recorded is skipped"
        with store.session() as session:
            records = [session.get(JobRecord, job_id) for job_id in ids]
            recorded.append(
                [
                    {
                        c.name: getattr(r, c.name)
                        for c in JobRecord.__table__.columns
                        if c.name not in {"id", "created_at"}
                    }
                    for r in records
                ]
            )
    assert recorded[0] == recorded[1] and recorded[0][2]["run_step"] == 2


def test_a_connection_the_database_closed_fails_one_submission_and_is_discarded() -> None:
    with fresh_database() as url:
        store = JobStore(make_engine(url, pool_size=1, ping_idle_s=None))  # no ping to hide the loss
        common: dict[str, Any] = {"kind": "embed", "request": {"input": ["a"]}, "tier": "fast", "queue": "fast"}
        assert submit_one(store, job_id=str(uuid.uuid4()), **common)
        admin = make_engine(url)
        with admin.connect() as connection:
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        admin.dispose()
        with pytest.raises(OperationalError) as failure:
            submit_one(store, job_id=str(uuid.uuid4()), **common)
        assert failure.value.connection_invalidated
        job_id = str(uuid.uuid4())
        assert submit_one(store, job_id=job_id, **common), "the pool opened a new connection"
        assert store.get(job_id) is not None
        store.engine.dispose()


def run_once(store: JobStore, owner: str) -> dict[str, Any]:
    job_id = new_job(store)
    assert start_one(store, job_id, model="m", provider="echo", tier="fast", worker="w", lease=lease(owner)) == 1
    # The same owner again (its message redelivered after a restart): the open attempt is closed as lost.
    assert start_one(store, job_id, model="m", provider="echo", tier="fast", worker="w", lease=lease(owner)) == 2
    result = GenerateResult(text="hello", model="m", usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5))
    succeed_one(store, job_id, 2, result=result, provider="echo", model_latency_ms=12.5)
    # A late success of the lost attempt changes nothing: the job has ended.
    succeed_one(store, job_id, 1, result=result, provider="echo", model_latency_ms=99.0)
    assert start_one(store, job_id, model="m", provider="echo", tier="fast", worker="w", lease=lease(owner)) is None
    view = store.get(job_id)
    assert view is not None and view.latency_ms is not None and view.latency_ms >= 0
    assert view.result is not None and view.result["text"] == "hello"
    return rows(store, job_id)


def test_one_statement_writes_leave_the_same_rows_as_transactions(stores: tuple[JobStore, JobStore]) -> None:
    one, several = stores
    by_one, by_several = run_once(one, "host:1"), run_once(several, "host:1")
    assert by_one == by_several
    assert by_one["job"]["status"] == JobStatus.SUCCEEDED and by_one["job"]["attempts"] == 2
    assert [a["status"] for a in by_one["attempts"]] == [AttemptStatus.LOST, AttemptStatus.SUCCEEDED]
    assert by_one["attempts"][1]["total_tokens"] == 5
    assert len(by_one["usage"]) == 1 and by_one["usage"][0]["total_tokens"] == 5


def test_a_live_lease_elsewhere_puts_a_duplicate_off_and_a_dead_ones_job_is_taken_over(
    stores: tuple[JobStore, JobStore],
) -> None:
    one, _ = stores
    job_id = new_job(one)
    assert start_one(one, job_id, model="m", provider="echo", tier="fast", worker="a", lease=lease("host:1")) == 1
    busy = start_one(one, job_id, model="m", provider="echo", tier="fast", worker="b", lease=lease("host:2"))
    assert isinstance(busy, Busy) and busy.owner == "host:1" and 55 < busy.remaining_s <= 60
    taken = start_one(
        one, job_id, model="m", provider="echo", tier="fast", worker="b", lease=lease("host:2", alive=False)
    )
    assert taken == 2
    assert [a.status for a in one.attempts(job_id)] == [AttemptStatus.LOST, AttemptStatus.RUNNING]


def test_racing_duplicates_start_a_job_once(stores: tuple[JobStore, JobStore]) -> None:
    one, _ = stores
    job_id = new_job(one)
    outcomes: list[object] = []
    barrier = threading.Barrier(8)

    def start(owner: str) -> None:
        barrier.wait()
        outcomes.append(
            start_one(one, job_id, model="m", provider="echo", tier="fast", worker=owner, lease=lease(owner))
        )

    threads = [threading.Thread(target=start, args=(f"host:{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o for o in outcomes if isinstance(o, int)) == [1]
    assert sum(isinstance(o, Busy) for o in outcomes) == 7
    assert [a.status for a in one.attempts(job_id)] == [AttemptStatus.RUNNING]


def test_a_set_of_jobs_is_started_and_ended_in_one_call_alike_on_both_paths(
    stores: tuple[JobStore, JobStore],
) -> None:
    found = []
    for store in stores:
        queued, ended, busy, orphaned = (new_job(store) for _ in range(4))
        unknown = str(uuid.uuid4())
        assert start_one(store, ended, model="m", provider="echo", tier="fast", worker="w", lease=lease("a:1")) == 1
        answer = GenerateResult(text="x", model="m", usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2))
        succeed_one(store, ended, 1, result=answer, provider="echo", model_latency_ms=1.0)
        assert start_one(store, busy, model="m", provider="echo", tier="fast", worker="w", lease=lease("live:1")) == 1
        assert start_one(store, orphaned, model="m", provider="echo", tier="fast", worker="w", lease=lease("dead:1"))
        mine = Lease(owner="mine:1", seconds=60.0, alive=lambda owner: owner != "dead:1")
        given = [unknown, orphaned, busy, ended, queued, orphaned]  # one twice: started once
        starts = store.start(given, AttemptSpec("m", "echo", "fast", "w"), mine)
        assert [(job.job_id, job.number) for job in starts.started] == [(orphaned, 2), (queued, 1)]
        assert starts.ended == [unknown, ended] and list(starts.busy) == [busy]
        late = Success(ended, 1, answer, "echo", 5.0)  # a redelivered answer of a job that ended: nothing changes
        store.succeed([Success(job.job_id, job.number, answer, "echo", 2.0) for job in starts.started] + [late])
        statuses = {job_id: rows(store, job_id) for job_id in (queued, ended, busy, orphaned)}
        assert [statuses[job_id]["job"]["status"] for job_id in (queued, ended, busy, orphaned)] == [
            JobStatus.SUCCEEDED,
            JobStatus.SUCCEEDED,
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
        ]
        assert [a["status"] for a in statuses[orphaned]["attempts"]] == [AttemptStatus.LOST, AttemptStatus.SUCCEEDED]
        assert all(len(statuses[job_id]["usage"]) == 1 for job_id in (queued, ended, orphaned))
        found.append([statuses[job_id] for job_id in (queued, ended, busy, orphaned)])
    assert found[0] == found[1]


def test_the_first_look_at_many_jobs_answers_as_the_look_at_each(
    stores: tuple[JobStore, JobStore], tmp_path: Any
) -> None:
    """One read for a take of many jobs: each job with the newest answer of its key (none for a job that opted
    out, and none once the job ended), as the one-job read gives it; on PostgreSQL and SQLite."""
    sqlite = JobStore(make_engine(f"sqlite:///{tmp_path / 'jobs.db'}"))
    Base.metadata.create_all(sqlite.engine)
    for store in (stores[0], sqlite):
        key, other = f"key-{uuid.uuid4()}", f"key-{uuid.uuid4()}"
        sources = []
        for text in ("older", "newer"):
            source = str(uuid.uuid4())
            submit_one(
                store, job_id=source, kind="generate", request={"prompt": "p"}, tier="fast", queue="fast", cache_key=key
            )
            number = start_one(store, source, model="m", provider="local", tier="fast", worker="w", lease=lease("o"))
            assert isinstance(number, int)
            result = GenerateResult(text=text, model="m", usage=Usage.of(1, 1))
            succeed_one(store, source, number, result=result, provider="local", model_latency_ms=1.0)
            sources.append(source)
        waiting, opted_out, alone = (str(uuid.uuid4()) for _ in range(3))
        submit_one(
            store, job_id=waiting, kind="generate", request={"prompt": "p"}, tier="fast", queue="fast", cache_key=key
        )
        request = {"prompt": "p", "use_cache": False}
        submit_one(store, job_id=opted_out, kind="generate", request=request, tier="fast", queue="fast", cache_key=key)
        submit_one(
            store, job_id=alone, kind="generate", request={"prompt": "q"}, tier="fast", queue="fast", cache_key=other
        )
        ids = [waiting, opted_out, alone, sources[0], str(uuid.uuid4())]
        looked = store.first_look(ids, max_age_s=60)
        assert set(looked) == set(ids[:4])  # the job never recorded is absent
        cached = {job_id: (source.id if source else None) for job_id, (_, source) in looked.items()}
        assert cached == {waiting: sources[1], opted_out: None, alone: None, sources[0]: None}
        for job_id in ids:
            job, source = store.get_with_cached(job_id, 60)
            assert (job.id if job else None, source.id if source else None) == (
                (job_id, cached[job_id]) if job_id in looked else (None, None)
            )
        assert all(source is None for _, source in store.first_look(ids, max_age_s=None).values())
    sqlite.engine.dispose()


def test_a_pooled_connection_the_database_closed_while_it_sat_unused_is_replaced_before_use() -> None:
    with fresh_database() as url:
        store = JobStore(make_engine(url, pool_size=1, ping_idle_s=0.0))  # every connection counts as idle
        common: dict[str, Any] = {"kind": "embed", "request": {"input": ["a"]}, "tier": "fast", "queue": "fast"}
        assert submit_one(store, job_id=str(uuid.uuid4()), **common)
        admin = make_engine(url)
        with admin.connect() as connection:
            closed = connection.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).scalar()
        admin.dispose()
        assert closed == 1
        assert submit_one(store, job_id=str(uuid.uuid4()), **common)  # no error: the ping found it gone
        store.engine.dispose()
