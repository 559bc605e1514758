"""Alembic environment: always run with a connection handed in by ``llm_router.tasks.database.upgrade``."""

from alembic import context

from llm_router.tasks.records import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through 'llm-router db upgrade', which passes the connection")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
