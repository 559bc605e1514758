"""The result cache key: identical requests (kind, tier, model, input, parameters) share one.

Fields that say how a job is handled rather than what it computes (``use_cache``, ``batch_id``,
``fallback``) are left out. The cached results themselves are the succeeded job rows: the database is
the cache, shared by every producer and worker, with an age limit.
"""

from __future__ import annotations

import hashlib
import json

from llm_router.tasks.schemas import ClassifyRequest, EmbedRequest, GenerateRequest

HANDLING_FIELDS = frozenset(
    {"use_cache", "batch_id", "fallback", "deadline_s", "stream", "priority", "callback_url", "batch_callback"}
)


def cache_key(request: GenerateRequest | EmbedRequest | ClassifyRequest, tier: str, tenant: str | None = None) -> str:
    """Identical requests on a tier share a key; a gateway tenant's never match another's (nor that of a
    request with no tenant): an answer is not handed across tenants, nor is whether a prompt was asked."""
    fields = request.model_dump(mode="json", exclude_none=True, exclude=set(HANDLING_FIELDS))
    fields["tier"] = tier
    if tenant is not None:
        fields["tenant"] = tenant
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
