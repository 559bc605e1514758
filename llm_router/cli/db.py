"""``llm-router db upgrade``: create or migrate the schema (Alembic)."""

from __future__ import annotations

import click

from llm_router.broker.settings import Settings
from llm_router.tasks.database import make_engine, upgrade


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def upgrade_command(revision: str) -> None:
    """Migrate the database to REVISION (default: the newest)."""
    settings = Settings()
    upgrade(make_engine(settings.resolved_database_url), revision)
    click.echo(f"database at {settings.safe_database_url()} is at revision {revision}")
