"""The one store: every SQL statement of the project lives in this package, one module per concern.

    lifecycle  every state change of a job and of its attempts (submit, start, succeed, fail, retry, defer,
               escalate, cancel, expire, recover, reject), set-based, each guard written once
    jobs       jobs read: one, many, a batch's, a key's, and those found lost
    cache      answers reused for identical requests
    usage      the usage report
    runs       comparisons, evaluations and pipelines
    webhooks   completion webhooks and their delivery attempts
    keys       the HTTP gateway's API keys, and what their tenants used
    files      files uploaded through the gateway (Batch API inputs)
    metrics    what /metrics reports, aggregated by the database
    marks      values the whole cluster shares (the broker epoch the sweeper recovered from)
    retention  pruning old final jobs, and the tables' sizes
    clock      the database's clock, which leases, due times and deadlines are stamped and judged on
    base       sessions, and the one place a job or usage row is built

Callers get read-only views (``views``) and never build queries themselves.
"""

from __future__ import annotations

from llm_router.tasks.store.base import DATABASE_UNAVAILABLE, NewJob
from llm_router.tasks.store.cache import ResultCache
from llm_router.tasks.store.files import FileRecords, FileView
from llm_router.tasks.store.jobs import JobRecords
from llm_router.tasks.store.keys import ApiKeyView, KeyRecords, TenantUsage
from llm_router.tasks.store.lifecycle import (
    AttemptFailure,
    AttemptSpec,
    Cancellation,
    Lifecycle,
    Started,
    Starts,
    Success,
)
from llm_router.tasks.store.marks import ClusterMarks
from llm_router.tasks.store.metrics import BUCKETS_S, MetricsReads, MetricsSnapshot
from llm_router.tasks.store.retention import Pruned, Retention, TableSize
from llm_router.tasks.store.runs import RunRecords
from llm_router.tasks.store.usage import ModelUsage, UsageReport, UsageReports, percentile
from llm_router.tasks.store.views import AttemptView, Busy, JobView, Lease, RunView, UsageRow, past_deadline
from llm_router.tasks.store.webhooks import WebhookAttemptView, WebhookRecords, WebhookView

__all__ = [
    "BUCKETS_S",
    "DATABASE_UNAVAILABLE",
    "ApiKeyView",
    "AttemptFailure",
    "AttemptSpec",
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
    "Starts",
    "Success",
    "TableSize",
    "TenantUsage",
    "UsageReport",
    "UsageRow",
    "WebhookAttemptView",
    "WebhookView",
    "past_deadline",
    "percentile",
]


class JobStore(
    Lifecycle,
    JobRecords,
    ResultCache,
    UsageReports,
    RunRecords,
    Retention,
    WebhookRecords,
    KeyRecords,
    FileRecords,
    MetricsReads,
    ClusterMarks,
):
    """Every read and write of jobs, attempts, usage and runs, over one engine; every state change of a job or
    an attempt through ``Lifecycle``."""
