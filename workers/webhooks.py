"""Sending completion webhooks: a job or batch that asked for one is claimed once when it ends, and its
delivery runs as a message of its own (``tasks.webhook``) on the job's queue. A failed delivery is
published again with a countdown, like a retry: nothing waits in a worker slot between attempts.

A delivery is I/O, and a receiver may be slow on purpose: the message's task only takes the webhook (one
process at a time, for one delivery) and hands it to this process's sender, an event loop on a thread of
its own, and returns. There the whole delivery (resolving, connecting, sending, the answer's headers) has one
hard deadline, ``LLM_ROUTER_WEBHOOK_TIMEOUT_S``, and the answer's body is never read: its status is all that
counts. A delivery taken by a process that died is sent again by the sweeper once it is overdue.

What may be called, and the signature, are ``llm_router.broker.webhooks``'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from llm_router.broker.settings import Settings
from llm_router.broker.webhooks import (
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
from llm_router.tasks.records import WebhookStatus
from llm_router.tasks.store import JobStore, WebhookView

log = logging.getLogger(__name__)

Publish = Callable[[str, str | None, float], None]  # (webhook id, queue, countdown)


def _retryable(status_code: int) -> bool:
    """5xx, 408 and 429 may pass; another 4xx says the receiver will not take this body."""
    return status_code >= 500 or status_code in (408, 429)


# How long past its deadline a delivery a process took may go unrecorded before the sweeper sends it again.
DELIVERY_GRACE_S = 30.0


class Webhooks:
    """One per worker process (it holds a sender and its HTTP client)."""

    def __init__(self, store: JobStore, settings: Settings, publish: Publish):
        self.store, self.settings, self.publish = store, settings, publish
        self.allowed: list[Network] = allowed_networks(settings.webhook_allowed_networks)
        self._sender: Sender | None = None
        self._client: httpx.AsyncClient | None = None
        self._starting = threading.Lock()

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

    def dispatch(self, webhook_id: str) -> str:
        """The body of ``tasks.webhook``: take the webhook for one delivery and hand it to this process's
        sender; returns at once. A webhook that ended, is not due, or is being sent elsewhere is left."""
        if not self.store.take_webhook(webhook_id, self.settings.webhook_timeout_s + DELIVERY_GRACE_S):
            return "ignored"
        self.sender.submit(self.deliver(webhook_id))
        return "sending"

    @property
    def sender(self) -> Sender:
        with self._starting:
            if self._sender is None:
                self._sender = Sender()
            return self._sender

    async def deliver(self, webhook_id: str) -> str:
        """One delivery attempt, on the sender's loop: what became of the webhook."""
        webhook = await asyncio.to_thread(self.store.webhook, webhook_id)
        if webhook is None or webhook.status != WebhookStatus.PENDING:
            return "ignored"  # unknown (pruned), or ended meanwhile
        document = await asyncio.to_thread(self._document, webhook)
        body = json.dumps(document, separators=(",", ":"), default=str).encode()
        began = time.perf_counter()
        status_code: int | None = None
        deadline_s = self.settings.webhook_timeout_s
        try:
            async with asyncio.timeout(deadline_s):
                status_code = await self._post(webhook, body)
            error = None if 200 <= status_code < 300 else f"HTTP {status_code}"
        except CallbackRefused as exc:
            await asyncio.to_thread(self._record, webhook, None, str(exc), began, WebhookStatus.REFUSED)
            log.warning("webhook %s refused: %s", webhook.id, exc)
            return WebhookStatus.REFUSED
        except TimeoutError:
            error = f"no answer within {deadline_s:g} s (the whole delivery's deadline)"
        except Exception as exc:  # httpx and the resolver raise many kinds; each is a failed attempt
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            await asyncio.to_thread(self._record, webhook, status_code, None, began, WebhookStatus.DELIVERED)
            return WebhookStatus.DELIVERED
        final = webhook.attempts + 1 >= self.settings.webhook_max_attempts or (
            status_code is not None and not _retryable(status_code)
        )
        outcome = WebhookStatus.FAILED if final else WebhookStatus.PENDING
        delay_s = 0.0 if final else retry_delay_s(webhook.attempts + 1, self.settings.retry_delay_scale)
        number = await asyncio.to_thread(self._record, webhook, status_code, error, began, outcome, delay_s)
        if not final:
            await asyncio.to_thread(self.publish, webhook.id, webhook.queue, delay_s)
        log.info("webhook %s attempt %d failed (%s)%s", webhook.id, number, error, "" if final else "; retried")
        return outcome

    def _record(
        self,
        webhook: WebhookView,
        status_code: int | None,
        error: str | None,
        began: float,
        outcome: WebhookStatus,
        retry_in_s: float = 0.0,
    ) -> int:
        latency_ms = (time.perf_counter() - began) * 1000.0
        return self.store.record_delivery(
            webhook.id,
            status_code=status_code,
            error=error,
            latency_ms=latency_ms,
            outcome=outcome,
            retry_in_s=retry_in_s,
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

    async def _post(self, webhook: WebhookView, body: bytes) -> int:
        """POST to the address the host resolved to and was checked at (never a second lookup); the answer's
        status, its body left unread."""
        if self.settings.webhook_secret is None:
            raise OSError("no LLM_ROUTER_WEBHOOK_SECRET is set on this worker: deliveries are always signed")
        parts = urlsplit(webhook.url)
        address = await asyncio.to_thread(resolve_allowed, webhook.url, self.allowed)
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
        async with self.client.stream("POST", target, content=body, headers=headers, extensions=extensions) as answer:
            return answer.status_code

    @property
    def client(self) -> httpx.AsyncClient:
        """The sender loop's HTTP client (made on that loop)."""
        if self._client is None:
            # No redirects: a 3xx could point anywhere, the cluster's own network included.
            self._client = httpx.AsyncClient(follow_redirects=False, timeout=None)
        return self._client


class Sender:
    """An event loop on a daemon thread of its own: deliveries wait on the network there, hundreds at a time,
    never in a worker slot that model jobs need."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="llm-router-webhooks", daemon=True).start()

    def submit(self, delivery: Coroutine[Any, Any, str]) -> Future[str]:
        future = asyncio.run_coroutine_threadsafe(delivery, self.loop)
        future.add_done_callback(_log_failure)
        return future


def _log_failure(future: Future[str]) -> None:
    if not future.cancelled() and future.exception() is not None:
        # Its record was not written (the database away): the sweeper sends it again once it is overdue.
        log.warning("a webhook delivery ended without its record (%s)", type(future.exception()).__name__)


WEBHOOK_TASK = "llm_router.webhook"
LEGACY_WEBHOOK_TASK = "tasks.webhook"  # the name before the package was llm_router, kept for one release


def webhook_task_id(webhook_id: str) -> str:
    return f"webhook:{webhook_id}:{uuid.uuid4().hex[:8]}"
