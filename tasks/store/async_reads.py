"""The reads the asyncio client and the gateway make on their async engine (psycopg's async driver, or
aiosqlite): a job's row, and whether the database answers."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from llm_router.tasks.database import PING_IDLE_S, ping_when_idle
from llm_router.tasks.store.base import JOBS
from llm_router.tasks.store.views import JobView


def async_engine(url: str) -> AsyncEngine:
    """The async engine of the same database, for reads of one statement each (no BEGIN and ROLLBACK around
    them): psycopg's async driver, its pooled connections tested when they sat idle (as ``make_engine``'s), or
    aiosqlite for SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return create_async_engine(parsed.set(drivername="sqlite+aiosqlite"))
    engine = create_async_engine(
        parsed.set(drivername="postgresql+psycopg"), pool_size=5, max_overflow=10, isolation_level="AUTOCOMMIT"
    )
    ping_when_idle(engine.sync_engine, PING_IDLE_S)
    return engine


async def read_job(engine: AsyncEngine, job_id: str) -> JobView | None:
    async with engine.connect() as connection:
        row = (await connection.execute(select(JOBS).where(JOBS.c.id == job_id))).first()
    return None if row is None else JobView.of(row)


async def database_answers(engine: AsyncEngine) -> None:
    """Raises whatever the driver raises when the database cannot be reached."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
