"""Engines and schema migration. One engine per process, created after fork by whoever needs it."""

from __future__ import annotations

import math
import time
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

from llm_router.tasks.errors import SchemaNotCurrent
from llm_router.tasks.storable import storable_json

# A job that waits for a free connection waits this long before its message is handed back for later.
POOL_WAIT_S = 300.0
PING_IDLE_S = 1.0  # a pooled connection unused this long is tested before use
_CHECKED_IN = "llm_router_checked_in"


def json_text(value: Any) -> str:
    """The JSON columns' serializer: orjson writes an embedding's 384 floats in 7 µs where the standard
    library takes 88 µs, and every result, request and usage row passes through it. Keys that are not
    strings are written as strings, as ``json.dumps`` writes them; a NUL in any string is written by the
    store's one rule (``llm_router.tasks.storable``), looked for in the encoded text so that the usual value costs
    one scan."""
    encoded = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    if b"\\u0000" in encoded:
        encoded = orjson.dumps(storable_json(value), option=orjson.OPT_NON_STR_KEYS)
    return encoded.decode()


def make_engine(
    url: str, *, sqlite_busy_timeout_s: float = 30.0, pool_size: int = 5, ping_idle_s: float | None = PING_IDLE_S
) -> Engine:
    """An engine for ``url``; on a server database, a pool of ``pool_size`` connections (twice that at peaks)
    that callers wait for rather than fail.

    A pooled connection that sat unused for ``ping_idle_s`` is tested before use (a round trip), so a caller
    does not meet one that a database restart closed while it sat; one in steady use is not (a test on every
    use would cost a round trip a statement), and the first use that finds the database gone discards the
    whole pool. Workers pass None: their work is a message that is handed back and retried when the database
    fails."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": sqlite_busy_timeout_s}, json_serializer=json_text)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=POOL_WAIT_S,
        json_serializer=json_text,
    )
    if ping_idle_s is not None:
        ping_when_idle(engine, ping_idle_s)
    return engine


def ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Test a pooled connection of ``engine`` before use when it sat unused for ``idle_s`` (see ``make_engine``)."""

    def checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_CHECKED_IN, math.inf) < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # each driver raises its own kind
            raise DisconnectionError("a pooled connection no longer answers") from exc  # the pool opens another

    event.listen(engine.pool, "checkin", checked_in)
    event.listen(engine.pool, "checkout", checked_out)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the producer read job states while a worker writes; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("llm_router.tasks").joinpath("migrations")))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``. The connection is passed in, so no URL (or password) is logged."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def schema_revision(engine: Engine) -> str | None:
    """The schema's migration revision (None: not migrated). Raises when the database does not answer."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest schema revision this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def check_schema(engine: Engine) -> None:
    """Refuse a database this code cannot use: one with no schema, or an older one. A newer one (a rolling
    upgrade migrated it first) is used: migrations only add. Raises ``SchemaNotCurrent`` with one line saying
    what to run, or the driver's error when the database does not answer."""
    from alembic.script import ScriptDirectory

    current, wanted = schema_revision(engine), head_revision()
    engine.dispose()  # the connection it took is closed: an engine made and dropped unused holds none
    if current == wanted:
        return
    where = engine.url.render_as_string(hide_password=True)
    if current is None:
        raise SchemaNotCurrent(f"the database at {where} has no schema: run `llm-router db upgrade`")
    known = {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current in known:
        raise SchemaNotCurrent(
            f"the database at {where} has schema revision {current}, wanted {wanted}: run `llm-router db upgrade`"
        )
