"""Files uploaded through the gateway: a tenant's Batch API inputs, read back only by that tenant."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from llm_router.tasks.records import FileRecord, utcnow
from llm_router.tasks.store.base import StoreBase, page_after


@dataclass(frozen=True)
class FileView:
    id: str
    tenant: str
    purpose: str
    filename: str
    bytes: int
    created_at: datetime


class FileRecords(StoreBase):
    def create_file(self, tenant: str, purpose: str, filename: str, content: str) -> FileView:
        record = FileRecord(
            id=f"file-{uuid.uuid4().hex}",
            tenant=tenant,
            purpose=purpose,
            filename=filename[:255],
            content=content,
            bytes=len(content.encode()),
            created_at=utcnow(),
        )
        with self.sessions.begin() as session:
            session.add(record)
        return FileView(record.id, tenant, purpose, record.filename, record.bytes, record.created_at)

    def file_of(self, file_id: str, tenant: str) -> tuple[FileView, str] | None:
        """A tenant's file and its content; None for another's or none."""
        with self.session() as session:
            record = session.get(FileRecord, file_id)
            if record is None or record.tenant != tenant:
                return None
            view = FileView(record.id, record.tenant, record.purpose, record.filename, record.bytes, record.created_at)
            return view, record.content

    def files_of(
        self,
        tenant: str,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[FileView]:
        """A tenant's files by upload time (newest first unless asked), ``limit`` of them after the file
        ``after`` (a cursor: the last id of the page before; an id that is not the tenant's starts at the top)."""
        columns = (FileRecord.created_at, FileRecord.id)
        owned = (FileRecord.tenant == tenant,)
        query = select(
            FileRecord.id, FileRecord.tenant, FileRecord.purpose, FileRecord.filename, FileRecord.bytes, *columns[:1]
        ).where(*owned)
        if purpose is not None:
            query = query.where(FileRecord.purpose == purpose)
        with self.session() as session:
            query = page_after(session, query, columns, after, owned, limit=limit, newest_first=newest_first)
            return [FileView(*row) for row in session.execute(query)]
