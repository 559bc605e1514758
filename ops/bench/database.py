"""A scratch PostgreSQL database of one benchmark or test run: created and migrated to head, dropped after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import create_engine

from llm_router.tasks.database import upgrade

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
URL_TEMPLATE = "postgresql+psycopg://postgres@127.0.0.1:5432/{database}"


@contextmanager
def bench_database(admin: str = ADMIN, url_template: str = URL_TEMPLATE, prefix: str = "llmr_bench") -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = url_template.format(database=name)
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
