"""The HTTP gateway's API keys and what their tenants used. A key is shown once, when created: only its
SHA-256 is kept, so a leaked database gives no key away."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select, update

from llm_router.tasks.records import (
    FINAL_STATUSES,
    UNFINISHED_STATUSES,
    ApiKeyRecord,
    JobRecord,
    JobStatus,
    UsageRecord,
    utcnow,
)
from llm_router.tasks.store.base import StoreBase

KEY_PREFIX = "llmr_"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKeyView:
    id: str
    tenant: str
    prefix: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    budget_tokens: int | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class TenantUsage:
    requests: int
    cached: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    by_model: dict[str, int]  # total tokens per model


def _view(record: ApiKeyRecord) -> ApiKeyView:
    return ApiKeyView(**{name: getattr(record, name) for name in ApiKeyView.__dataclass_fields__})


class KeyRecords(StoreBase):
    def create_key(
        self,
        tenant: str,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        budget_tokens: int | None = None,
    ) -> tuple[str, ApiKeyView]:
        """A new key for ``tenant``: the key itself (never stored, never shown again) and its record."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id=str(uuid.uuid4()),
            tenant=tenant,
            prefix=key[:12],
            key_hash=key_hash(key),
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            budget_tokens=budget_tokens,
            created_at=utcnow(),
        )
        with self.sessions.begin() as session:
            session.add(record)
            session.flush()
            return key, _view(record)

    def key_for(self, key: str) -> ApiKeyView | None:
        """The live (not revoked) key whose SHA-256 this key has."""
        with self.session() as session:
            record = session.scalars(
                select(ApiKeyRecord).where(ApiKeyRecord.key_hash == key_hash(key), ApiKeyRecord.revoked_at.is_(None))
            ).first()
            return _view(record) if record is not None else None

    def keys(self, tenant: str | None = None) -> list[ApiKeyView]:
        query = select(ApiKeyRecord).order_by(ApiKeyRecord.created_at)
        if tenant is not None:
            query = query.where(ApiKeyRecord.tenant == tenant)
        with self.session() as session:
            return [_view(record) for record in session.scalars(query)]

    def revoke_key(self, id_or_prefix: str) -> int:
        """Revoke the key with this id or prefix (as ``keys list`` shows them); how many were revoked."""
        which = (ApiKeyRecord.id == id_or_prefix) | (ApiKeyRecord.prefix == id_or_prefix)
        with self.sessions.begin() as session:
            result = session.execute(
                update(ApiKeyRecord).where(which, ApiKeyRecord.revoked_at.is_(None)).values(revoked_at=utcnow())
            )
            return int(getattr(result, "rowcount", 0))

    def tenant_tokens(self, tenant: str, since: datetime | None = None) -> int:
        """Tokens the tenant's jobs used (since ``since``)."""
        query = select(func.coalesce(func.sum(UsageRecord.total_tokens), 0)).where(UsageRecord.tenant == tenant)
        if since is not None:
            query = query.where(UsageRecord.created_at >= since)
        with self.session() as session:
            return int(session.scalar(query) or 0)

    def ended_usage(self, subjects: list[str]) -> dict[str, int]:
        """Of ``subjects`` (``job:<id>``, ``batch:<id>``), those that ended, with the tokens they used: a job
        once final, a batch once none of its jobs is unfinished. One that is gone (never recorded, or pruned)
        ended with nothing used."""
        jobs = [subject.removeprefix("job:") for subject in subjects if subject.startswith("job:")]
        batches = [subject.removeprefix("batch:") for subject in subjects if subject.startswith("batch:")]
        tokens = func.coalesce(UsageRecord.total_tokens, 0)
        ended: dict[str, int] = {}
        with self.session() as session:
            if jobs:
                rows = session.execute(
                    select(JobRecord.id, JobRecord.status, tokens)
                    .outerjoin(UsageRecord, UsageRecord.job_id == JobRecord.id)
                    .where(JobRecord.id.in_(jobs))
                ).all()
                found = {job_id: (status, used) for job_id, status, used in rows}
                for job_id in jobs:
                    status, used = found.get(job_id, (JobStatus.SUCCEEDED, 0))
                    if status in FINAL_STATUSES:
                        ended[f"job:{job_id}"] = int(used)
            if batches:
                unfinished = func.sum(case((JobRecord.status.in_(UNFINISHED_STATUSES), 1), else_=0))
                rows = session.execute(
                    select(JobRecord.batch_id, unfinished, func.sum(tokens))
                    .outerjoin(UsageRecord, UsageRecord.job_id == JobRecord.id)
                    .where(JobRecord.batch_id.in_(batches))
                    .group_by(JobRecord.batch_id)
                ).all()
                counts = {batch_id: (int(waiting or 0), int(used or 0)) for batch_id, waiting, used in rows}
                for batch_id in batches:
                    waiting, used = counts.get(batch_id, (0, 0))
                    if not waiting:
                        ended[f"batch:{batch_id}"] = used
        return ended

    def tenant_usage(self, tenant: str, since: datetime | None = None) -> TenantUsage:
        window = [UsageRecord.tenant == tenant] + ([UsageRecord.created_at >= since] if since is not None else [])
        with self.session() as session:
            rows = session.execute(
                select(
                    UsageRecord.model,
                    func.count(UsageRecord.id),
                    func.sum(func.cast(UsageRecord.cached, type_=UsageRecord.prompt_tokens.type)),
                    func.sum(UsageRecord.prompt_tokens),
                    func.sum(UsageRecord.completion_tokens),
                    func.sum(UsageRecord.total_tokens),
                )
                .where(*window)
                .group_by(UsageRecord.model)
            ).all()
        return TenantUsage(
            requests=sum(int(r[1] or 0) for r in rows),
            cached=sum(int(r[2] or 0) for r in rows),
            prompt_tokens=sum(int(r[3] or 0) for r in rows),
            completion_tokens=sum(int(r[4] or 0) for r in rows),
            total_tokens=sum(int(r[5] or 0) for r in rows),
            by_model={str(r[0]): int(r[5] or 0) for r in rows},
        )
