"""The result cache: a job is answered by the newest identical request a model answered within the TTL.
Jobs answered from the cache are never sources: an answer's age counts from when it was computed."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import ColumnElement, Connection, func, select

from llm_router.tasks.records import JobRecord, JobStatus, utcnow
from llm_router.tasks.store.base import JOBS, StoreBase
from llm_router.tasks.store.views import JobView


def _sources(max_age_s: float) -> list[ColumnElement[bool]]:
    oldest = utcnow() - timedelta(seconds=max_age_s)
    return [JobRecord.status == JobStatus.SUCCEEDED, JobRecord.cached.is_(False), JobRecord.finished_at >= oldest]


def _newest_source(connection: Connection, cache_key: str, max_age_s: float) -> JobView | None:
    row = connection.execute(
        select(JOBS)
        .where(JOBS.c.cache_key == cache_key, *_sources(max_age_s))
        .order_by(JOBS.c.finished_at.desc())
        .limit(1)
    ).first()
    return JobView.of(row) if row else None


def _wants_cache(job: JobView) -> bool:
    """Whether a job still to run would be answered from the cache: it has a key and did not opt out."""
    return not job.is_final and bool(job.cache_key) and (job.request or {}).get("use_cache", True) is not False


def _newest_sources(connection: Connection, cache_keys: list[str], max_age_s: float) -> dict[str | None, JobView]:
    """The newest source of each key (``_newest_source`` for many keys, one statement)."""
    newest = (
        func.row_number()
        .over(partition_by=JOBS.c.cache_key, order_by=(JOBS.c.finished_at.desc(), JOBS.c.id))
        .label("newest")
    )
    ranked = select(JOBS, newest).where(JOBS.c.cache_key.in_(cache_keys), *_sources(max_age_s)).subquery()
    rows = connection.execute(select(*(ranked.c[column.name] for column in JOBS.c)).where(ranked.c.newest == 1))
    return {row.cache_key: JobView.of(row) for row in rows}


class ResultCache(StoreBase):
    def find_cached(self, cache_key: str, max_age_s: float) -> JobView | None:
        """The newest job with this key whose answer a model computed less than ``max_age_s`` ago."""
        with self.autocommit.connect() as connection:
            return _newest_source(connection, cache_key, max_age_s)

    def get_with_cached(self, job_id: str, max_age_s: float | None) -> tuple[JobView | None, JobView | None]:
        """A worker's first look at a job: the job, and, when ``max_age_s`` is given and the job is still to run
        and asks for the cache, the answer ``find_cached`` would give for its key."""
        return self.first_look([job_id], max_age_s).get(job_id, (None, None))

    def first_look(self, job_ids: list[str], max_age_s: float | None) -> dict[str, tuple[JobView, JobView | None]]:
        """``get_with_cached`` for many jobs, in two statements on one connection (rows, not ORM objects: this
        read runs for every job); a job never recorded is absent from the answer."""
        with self.autocommit.connect() as connection:
            jobs = [JobView.of(row) for row in connection.execute(select(JOBS).where(JOBS.c.id.in_(job_ids)))]
            keys = {job.cache_key for job in jobs if job.cache_key and max_age_s is not None and _wants_cache(job)}
            sources = _newest_sources(connection, sorted(keys), max_age_s) if max_age_s is not None and keys else {}
        return {job.id: (job, sources.get(job.cache_key) if _wants_cache(job) else None) for job in jobs}

    def cached_keys(self, keys: list[str], max_age_s: float) -> set[str]:
        """Which of these cache keys have an answer within ``max_age_s``."""
        if not keys:
            return set()
        with self.session() as session:
            return set(
                session.scalars(select(JobRecord.cache_key).where(JobRecord.cache_key.in_(keys), *_sources(max_age_s)))
            )
