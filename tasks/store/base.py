"""What every part of the store shares: its sessions, and the one place a job or usage row is built."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Insert, Select, Table, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from llm_router.tasks.records import (
    FINAL_STATUSES,
    AttemptRecord,
    JobRecord,
    JobStatus,
    RunRecord,
    UsageRecord,
    WebhookRecord,
    utcnow,
)
from llm_router.tasks.schemas import Usage
from llm_router.tasks.store.clock import DatabaseClock

# What a lost or restarting database raises, or a pool with no connection free for POOL_WAIT_S: the work
# is retried later, never acknowledged as done.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)

JOBS: Table = JobRecord.__table__  # type: ignore[assignment]
ATTEMPTS: Table = AttemptRecord.__table__  # type: ignore[assignment]
USAGE: Table = UsageRecord.__table__  # type: ignore[assignment]
RUNS: Table = RunRecord.__table__  # type: ignore[assignment]
WEBHOOKS: Table = WebhookRecord.__table__  # type: ignore[assignment]

MAX_STORED_REJECTED_REQUEST = 64 * 1024


@dataclass(frozen=True)
class NewJob:
    """A job to record as queued: its request as stored, where it goes, and its cache key."""

    job_id: str
    kind: str
    request: dict[str, Any]
    tier: str
    queue: str
    cache_key: str | None = None
    idempotency_key: str | None = None
    run_step: int | None = None
    tenant: str | None = None


class StoreBase:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        # Reads, and writes of one statement, run each statement on its own: no BEGIN and COMMIT (or ROLLBACK)
        # round trips around it. PostgreSQL's READ COMMITTED gave each statement its own snapshot anyway, so
        # a read sees nothing different.
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.statements = sessionmaker(self.autocommit, expire_on_commit=False)
        # PostgreSQL runs a job's hot writes (start an attempt, record a success) as one statement each, its
        # parts chained in data-modifying CTEs: one round trip instead of five or six. Elsewhere (SQLite)
        # the same writes run as a transaction of several statements.
        self.one_statement_writes = engine.dialect.name == "postgresql"
        # Submissions' INSERTs skip the session and Core's execution where the driver allows it: one job's (its
        # id or its idempotency key may be taken) and a batch's (deterministic ids may be taken).
        self.driver_insert: DriverInsert | None = None
        self.driver_insert_many: DriverInsert | None = None
        # Leases, due times and deadlines are stamped and judged on the database's clock (see ``clock``).
        self.clock = DatabaseClock(engine.dialect.name)
        if DriverInsert.serves(engine):
            # A job's creation is its first due time and the start of its deadline: the database stamps it.
            insert_job = postgresql.insert(JOBS).values(created_at=self.clock.now())
            columns = [name for name in JOB_COLUMNS if name != "created_at"]
            self.driver_insert = DriverInsert(engine, insert_job.on_conflict_do_nothing().returning(JOBS.c.id), columns)
            self.driver_insert_many = DriverInsert(
                engine, insert_job.on_conflict_do_nothing(index_elements=["id"]).returning(JOBS.c.id), columns
            )

    def session(self) -> Session:
        """A session whose statements each commit on their own: for reads. Writes of several statements use
        ``self.sessions.begin()``."""
        return self.statements()

    def database_now(self) -> datetime:
        """The database's clock, read: what the sweeper and the requeue command judge by."""
        with self.autocommit.connect() as connection:
            return self.clock.read(connection)


def job_row(
    *,
    job_id: str,
    kind: str,
    request: dict[str, Any] | None,
    status: JobStatus = JobStatus.QUEUED,
    tier: str | None = None,
    queue: str | None = None,
    cache_key: str | None = None,
    error: str | None = None,
    idempotency_key: str | None = None,
    run_step: int | None = None,
    tenant: str | None = None,
) -> dict[str, Any]:
    """A new job's columns, as ``insert(JobRecord)`` and ``JobRecord(**row)`` take them."""
    now = utcnow()
    return {
        "id": job_id,
        "kind": kind,
        "status": status,
        "tier": tier,
        "queue": queue,
        "requested_model": (request or {}).get("model"),
        "request": request,
        "batch_id": (request or {}).get("batch_id"),
        "cache_key": cache_key,
        "idempotency_key": idempotency_key,
        "run_step": run_step,
        "tenant": tenant,
        "error": error,
        "cached": False,
        "attempts": 0,
        "tier_hops": 0,
        "created_at": now,
        "finished_at": now if status in FINAL_STATUSES else None,
    }


JOB_COLUMNS = list(job_row(job_id="", kind="", request=None))


def usage_row(
    *,
    job_id: str,
    kind: str,
    tier: str | None,
    model: str,
    provider: str,
    usage: Usage,
    cached: bool,
    latency_ms: float | None,
    now: datetime,
    tenant: str | None = None,
) -> dict[str, Any]:
    """A job's one usage row: what it cost (nothing for a cached answer) and how long the caller waited."""
    return {
        "job_id": job_id,
        "kind": kind,
        "tier": tier,
        "model": model,
        "provider": provider,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached": cached,
        "latency_ms": latency_ms,
        "created_at": now,
        "tenant": tenant,
    }


def storable(request: dict[str, Any] | None) -> dict[str, Any] | None:
    """A rejected request as it can be kept: strict JSON (no NaN), and small. Anything else is described
    rather than stored, so that recording the rejection cannot itself fail."""
    if request is None:
        return None
    try:
        encoded = json.dumps(request, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return {"not_stored": f"not strict JSON ({type(exc).__name__})", "fields": sorted(map(str, request))[:50]}
    if len(encoded) > MAX_STORED_REJECTED_REQUEST:
        return {"not_stored": f"{len(encoded):,} bytes", "fields": sorted(map(str, request))[:50]}
    return request


def elapsed_ms(since: datetime, now: datetime) -> float:
    if since.tzinfo is None:  # SQLite hands back naive timestamps
        now = now.replace(tzinfo=None)
    return (now - since).total_seconds() * 1000.0


def insert_ignoring_duplicates(session: Session, table: Table, column: str | None) -> Any:
    """An INSERT that skips rows whose ``column`` (a unique key; None: any unique key) is already taken."""
    dialect = session.get_bind().dialect.name
    columns = [column] if column else None
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=columns)
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=columns)
    raise NotImplementedError(f"inserts that skip duplicates on {dialect}")


class DriverInsert:
    """An INSERT compiled once and run on the database driver's own connection: for the producers' hot paths,
    where an ORM session and Core's execution cost more (0.5 ms) than the statement's own round trip (0.2 ms),
    and where Core sends a thousand rows as one statement of 18,000 parameters that the driver parses anew
    each time (0.25 s). The values go through the columns' own bind processors, as Core sends them; the
    driver's errors come back as SQLAlchemy's, and a connection that failed is discarded."""

    def __init__(self, engine: Engine, statement: Insert, keys: list[str]):
        dialect = engine.dialect
        self._engine = engine
        self._keys = keys
        self._sql = str(statement.compile(dialect=dialect, column_keys=keys))
        self._processors = {
            column.key: column.type.dialect_impl(dialect).bind_processor(dialect) for column in statement.table.columns
        }

    @staticmethod
    def serves(engine: Engine) -> bool:
        """Whether ``engine``'s driver is psycopg (3): PostgreSQL, named parameters, pipelined ``executemany``."""
        return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"

    def first(self, row: dict[str, Any]) -> Any:
        """Insert ``row`` in a statement of its own; the first row the statement returns (None: none)."""
        with self._driver() as driver:
            cursor = driver.cursor()
            cursor.execute(self._sql, self._parameters(row))
            return cursor.fetchone()

    def many(self, rows: list[dict[str, Any]]) -> list[Any]:
        """Insert ``rows`` in one transaction, sent together through the driver's pipeline; the rows the
        statements return."""
        with self._driver() as driver, driver.transaction():
            cursor = driver.cursor()
            cursor.executemany(self._sql, [self._parameters(row) for row in rows], returning=True)
            returned = []
            while True:
                returned += cursor.fetchall()
                if not cursor.nextset():
                    return returned

    def _parameters(self, row: dict[str, Any]) -> dict[str, Any]:
        return {key: processor(row[key]) if (processor := self._processors[key]) else row[key] for key in self._keys}

    @contextmanager
    def _driver(self) -> Iterator[Any]:
        """A pooled connection's driver connection, in autocommit while it is lent."""
        pooled = self._engine.raw_connection()
        driver: Any = pooled.driver_connection
        try:
            driver.autocommit = True
            try:
                yield driver
            finally:
                driver.autocommit = False  # the pool hands out connections in transaction mode
        except self._engine.dialect.loaded_dbapi.Error as exc:
            invalidated = self._engine.dialect.is_disconnect(exc, driver, None)
            if invalidated:
                pooled.invalidate()
            raise DBAPIError.instance(
                self._sql, None, exc, self._engine.dialect.loaded_dbapi.Error, connection_invalidated=invalidated
            ) from exc
        finally:
            pooled.close()


def page_after(
    session: Session,
    query: Select[Any],
    columns: tuple[Any, Any],
    after: Any,
    owned: tuple[Any, ...],
    *,
    limit: int,
    newest_first: bool = True,
) -> Select[Any]:
    """``query`` ordered by ``columns`` (a time, then an id to break ties), ``limit`` rows after the row whose
    id is ``after`` (a page's cursor: the last id of the page before); a cursor that names no row of ``owned``
    starts at the top."""
    if after is not None:
        cursor = session.execute(select(*columns).where(columns[1] == after, *owned)).first()
        if cursor is not None:
            beyond = tuple_(*columns) < tuple_(*cursor) if newest_first else tuple_(*columns) > tuple_(*cursor)
            query = query.where(beyond)
    return query.order_by(*(column.desc() if newest_first else column.asc() for column in columns)).limit(limit)
