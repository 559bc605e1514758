"""Marks the cluster shares through the database, which outlives any broker or Redis loss."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from llm_router.tasks.records import ClusterMark, utcnow
from llm_router.tasks.store.base import StoreBase


class ClusterMarks(StoreBase):
    def mark(self, name: str) -> str | None:
        with self.session() as session:
            return session.scalar(select(ClusterMark.value).where(ClusterMark.name == name))

    def set_mark(self, name: str, value: str, *, if_absent: bool = False) -> None:
        """Set a mark; with ``if_absent``, only where none is set (a racing writer of the same name wins)."""
        try:
            with self.sessions.begin() as session:
                record = session.get(ClusterMark, name, with_for_update=True)
                if record is None:
                    session.add(ClusterMark(name=name, value=value, updated_at=utcnow()))
                elif not if_absent:
                    record.value, record.updated_at = value, utcnow()
        except IntegrityError:  # another process set it first
            if not if_absent:
                self.set_mark(name, value)
