"""Sending completion webhooks: a job or batch that asked for one is claimed once when it ends, and its
delivery runs as a message of its own (``tasks.webhook``) on the job's queue. A failed delivery is
published again with a countdown, like a retry: nothing waits in a worker slot between attempts.

What may be called, and the signature, are ``broker.webhooks``'s.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

from broker.settings import Settings
from broker.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    CallbackRefused,
    Network,
    allowed_networks,
    resolve_allowed,
    retry_delay_s,
    signature,
)
from tasks.records import WebhookStatus
from tasks.store import JobStore, WebhookView

log = logging.getLogger(__name__)

Publish = Callable[[str, str | None, float], None]  # (webhook id, queue, countdown)


def _retryable(status_code: int) -> bool:
    """5xx, 408 and 429 may pass; another 4xx says the receiver will not take this body."""
    return status_code >= 500 or status_code in (408, 429)


class Webhooks:
    """One per worker process (it holds an HTTP client)."""

    def __init__(self, store: JobStore, settings: Settings, publish: Publish):
        self.store, self.settings, self.publish = store, settings, publish
        self.allowed: list[Network] = allowed_networks(settings.webhook_allowed_networks)
        self._client: httpx.Client | None = None

    # ---- when a job ends ----------------------------------------------------------------------------------

    def job_ended(self, job_id: str, queue: str | None, callback_url: str | None, batch_id: str | None) -> None:
        """A job reached its final record: claim its webhook, and its batch's once the batch is done
        (``batch_id`` only for a job of a batch with a webhook). A repeated call sends nothing twice."""
        if callback_url:
            self._claim(f"job:{job_id}", "job.ended", callback_url, queue)
        if batch_id and self.store.end_batch_if_done(batch_id):
            run = self.store.get_run(batch_id)
            url = (run.request or {}).get("callback_url") if run is not None else None
            if isinstance(url, str):
                self._claim(f"batch:{batch_id}", "batch.ended", url, queue)

    def _claim(self, subject: str, event: str, url: str, queue: str | None) -> None:
        webhook_id = self.store.claim_webhook(subject, event, url, queue)
        if webhook_id is not None:
            self.publish(webhook_id, queue, 0.0)

    # ---- a delivery ---------------------------------------------------------------------------------------

    def deliver(self, webhook_id: str) -> str:
        """One delivery attempt (the body of ``tasks.webhook``): what became of the webhook."""
        webhook = self.store.webhook(webhook_id)
        if webhook is None or webhook.status != WebhookStatus.PENDING:
            return "ignored"  # unknown (pruned), or a duplicate message of one that ended
        body = json.dumps(self._document(webhook), separators=(",", ":"), default=str).encode()
        began = time.perf_counter()
        status_code: int | None = None
        try:
            status_code = self._post(webhook, body)
            error = None if 200 <= status_code < 300 else f"HTTP {status_code}"
        except CallbackRefused as exc:
            self._record(webhook, None, str(exc), began, WebhookStatus.REFUSED)
            log.warning("webhook %s refused: %s", webhook.id, exc)
            return WebhookStatus.REFUSED
        except Exception as exc:  # httpx and the resolver raise many kinds; each is a failed attempt
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self._record(webhook, status_code, None, began, WebhookStatus.DELIVERED)
            return WebhookStatus.DELIVERED
        final = webhook.attempts + 1 >= self.settings.webhook_max_attempts or (
            status_code is not None and not _retryable(status_code)
        )
        outcome = WebhookStatus.FAILED if final else WebhookStatus.PENDING
        number = self._record(webhook, status_code, error, began, outcome)
        if not final:
            self.publish(webhook.id, webhook.queue, retry_delay_s(number, self.settings.retry_delay_scale))
        log.info("webhook %s attempt %d failed (%s)%s", webhook.id, number, error, "" if final else "; retried")
        return outcome

    def _record(
        self, webhook: WebhookView, status_code: int | None, error: str | None, began: float, outcome: WebhookStatus
    ) -> int:
        latency_ms = (time.perf_counter() - began) * 1000.0
        return self.store.record_delivery(
            webhook.id, status_code=status_code, error=error, latency_ms=latency_ms, outcome=outcome
        )

    def _document(self, webhook: WebhookView) -> dict[str, object]:
        kind, _, subject_id = webhook.subject.partition(":")
        document: dict[str, object] = {"event": webhook.event, "delivery": webhook.id}
        if kind == "job":
            view = self.store.get(subject_id)
            document["job"] = view.document() if view is not None else {"id": subject_id, "status": "pruned"}
        else:
            run = self.store.get_run(subject_id)
            document["batch"] = {
                "id": subject_id,
                "counts": self.store.batch_counts(subject_id),
                "created_at": run.created_at.isoformat() if run is not None else None,
                "finished_at": run.finished_at.isoformat() if run is not None and run.finished_at else None,
            }
        return document

    def _post(self, webhook: WebhookView, body: bytes) -> int:
        """POST to the address the host resolved to and was checked at (never a second lookup)."""
        if self.settings.webhook_secret is None:
            raise OSError("no LLM_ROUTER_WEBHOOK_SECRET is set on this worker: deliveries are always signed")
        parts = urlsplit(webhook.url)
        address = resolve_allowed(webhook.url, self.allowed)
        netloc = f"[{address}]" if address.version == 6 else str(address)
        if parts.port is not None:
            netloc += f":{parts.port}"
        target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        secret = self.settings.webhook_secret.get_secret_value()
        headers = {
            "Content-Type": "application/json",
            "Host": parts.netloc,
            SIGNATURE_HEADER: signature(secret, body, int(time.time())),
            EVENT_HEADER: webhook.event,
            DELIVERY_HEADER: webhook.id,
            "User-Agent": "llm-runner-router-webhooks",
        }
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        response = self.client.post(target, content=body, headers=headers, extensions=extensions)
        return response.status_code

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            # No redirects: a 3xx could point anywhere, the cluster's own network included.
            self._client = httpx.Client(timeout=self.settings.webhook_timeout_s, follow_redirects=False)
        return self._client


WEBHOOK_TASK = "tasks.webhook"


def webhook_task_id(webhook_id: str) -> str:
    return f"webhook:{webhook_id}:{uuid.uuid4().hex[:8]}"
