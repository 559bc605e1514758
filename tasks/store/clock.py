"""The one clock that leases, due times and deadlines are stamped and judged on: the database's.

Hosts' clocks drift apart (a container 60 s behind, a sweeper's host ahead): a lease stamped on one host and
judged on another would run out early, and a live job would run twice. So every lease, due time and deadline
is written and compared in SQL, against ``clock_timestamp()`` on PostgreSQL: one clock for the whole cluster,
whatever the workers' hosts say. SQLite is the embedded mode, one host: its clock is that host's, and times
are computed in Python (SQLite has no interval arithmetic on the stored text).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, DateTime, func, literal, select
from sqlalchemy.engine import Connection

from llm_router.tasks.records import utcnow

_TIMESTAMP = DateTime(timezone=True)


class DatabaseClock:
    def __init__(self, dialect: str):
        self.in_sql = dialect == "postgresql"

    def now(self, plus_s: float = 0.0) -> ColumnElement[datetime]:
        """The database's now, ``plus_s`` seconds on, as an expression evaluated where the statement runs."""
        if not self.in_sql:
            return literal(utcnow() + timedelta(seconds=plus_s), _TIMESTAMP)
        moment = func.clock_timestamp(type_=_TIMESTAMP)
        return moment + timedelta(seconds=plus_s) if plus_s else moment

    def read(self, connection: Connection) -> datetime:
        """The database's now, read (one round trip on PostgreSQL), for decisions taken in Python."""
        if not self.in_sql:
            return utcnow()
        moment = connection.execute(select(func.clock_timestamp(type_=_TIMESTAMP))).scalar_one()
        assert isinstance(moment, datetime)
        return moment
