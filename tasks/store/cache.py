"""The result cache: a job is answered by the newest identical request a model answered within the TTL.
Jobs answered from the cache are never sources: an answer's age counts from when it was computed."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import ColumnElement, Connection, select

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


class ResultCache(StoreBase):
    def find_cached(self, cache_key: str, max_age_s: float) -> JobView | None:
        """The newest job with this key whose answer a model computed less than ``max_age_s`` ago."""
        with self.autocommit.connect() as connection:
            return _newest_source(connection, cache_key, max_age_s)

    def get_with_cached(self, job_id: str, max_age_s: float | None) -> tuple[JobView | None, JobView | None]:
        """A worker's first look at a job, on one connection: the job, and, when ``max_age_s`` is given and the
        job is still to run and asks for the cache, the answer ``find_cached`` would give for its key."""
        with self.autocommit.connect() as connection:  # rows, not ORM objects: this read runs for every job
            record = connection.execute(select(JOBS).where(JOBS.c.id == job_id)).first()
            if record is None:
                return None, None
            job = JobView.of(record)
            wants_cache = (job.request or {}).get("use_cache", True) is not False
            if max_age_s is None or job.is_final or not job.cache_key or not wants_cache:
                return job, None
            return job, _newest_source(connection, job.cache_key, max_age_s)

    def cached_keys(self, keys: list[str], max_age_s: float) -> set[str]:
        """Which of these cache keys have an answer within ``max_age_s``."""
        if not keys:
            return set()
        with self.session() as session:
            return set(
                session.scalars(select(JobRecord.cache_key).where(JobRecord.cache_key.in_(keys), *_sources(max_age_s)))
            )
