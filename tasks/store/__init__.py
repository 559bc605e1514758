"""The one store: every SQL statement of the project lives in this package, one module per concern.

    jobs       jobs as a whole: created, read, rejected, failed, moved to another tier, found lost
    attempts   one job's attempts on a worker, its result and usage
    groups     the same for jobs run together, in one transaction per group
    cache      answers reused for identical requests
    usage      the usage report
    endings    jobs cancelled by their caller or expired by their deadline
    runs       comparisons, evaluations and pipelines
    webhooks   completion webhooks and their delivery attempts
    keys       the HTTP gateway's API keys, and what their tenants used
    files      files uploaded through the gateway (Batch API inputs)
    metrics    what /metrics reports, aggregated by the database
    marks      values the whole cluster shares (the broker epoch the sweeper recovered from)
    retention  pruning old final jobs, and the tables' sizes
    base       sessions, and the one place a job or usage row is built

Callers get read-only views (``views``) and never build queries themselves.
"""

from __future__ import annotations

from llm_router.tasks.store.attempts import AttemptWrites
from llm_router.tasks.store.base import DATABASE_UNAVAILABLE, NewJob
from llm_router.tasks.store.cache import ResultCache
from llm_router.tasks.store.endings import Cancellation, JobEndings
from llm_router.tasks.store.files import FileRecords, FileView
from llm_router.tasks.store.groups import GroupWrites, Started
from llm_router.tasks.store.jobs import JobRecords
from llm_router.tasks.store.keys import ApiKeyView, KeyRecords, TenantUsage
from llm_router.tasks.store.marks import ClusterMarks
from llm_router.tasks.store.metrics import BUCKETS_S, MetricsReads, MetricsSnapshot
from llm_router.tasks.store.retention import Pruned, Retention, TableSize
from llm_router.tasks.store.runs import RunRecords
from llm_router.tasks.store.usage import ModelUsage, UsageReport, UsageReports, percentile
from llm_router.tasks.store.views import AttemptView, Busy, JobView, Lease, RunView, UsageRow
from llm_router.tasks.store.webhooks import WebhookAttemptView, WebhookRecords, WebhookView

__all__ = [
    "BUCKETS_S",
    "DATABASE_UNAVAILABLE",
    "ApiKeyView",
    "AttemptView",
    "Busy",
    "Cancellation",
    "FileView",
    "JobStore",
    "JobView",
    "Lease",
    "MetricsSnapshot",
    "ModelUsage",
    "NewJob",
    "Pruned",
    "RunView",
    "Started",
    "TableSize",
    "TenantUsage",
    "UsageReport",
    "UsageRow",
    "WebhookAttemptView",
    "WebhookView",
    "percentile",
]


class JobStore(
    JobRecords,
    AttemptWrites,
    GroupWrites,
    ResultCache,
    JobEndings,
    UsageReports,
    RunRecords,
    Retention,
    WebhookRecords,
    KeyRecords,
    FileRecords,
    MetricsReads,
    ClusterMarks,
):
    """Every read and write of jobs, attempts, usage and runs, over one engine."""
