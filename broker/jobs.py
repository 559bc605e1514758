"""Following a job: ``Job`` reads its record, waits for its end (woken by the worker's notice), streams its
text and cancels it. Any process can follow any job: every method reads the database."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from redis.exceptions import RedisError

from llm_router.broker.notifications import SAFETY_POLL_S, DoneNotices
from llm_router.broker.streams import read_stream, stream_key
from llm_router.tasks.errors import (
    JobCancelled,
    JobExpired,
    JobFailed,
    JobRejected,
    JobTimeout,
    RouterError,
)
from llm_router.tasks.records import WAITING_STATUSES, JobStatus
from llm_router.tasks.schemas import (
    ClassifyResult,
    EmbedResult,
    GenerateResult,
    parse_result,
)
from llm_router.tasks.store import AttemptView, Cancellation, JobStore, JobView, past_deadline

Result = GenerateResult | EmbedResult | ClassifyResult
log = logging.getLogger(__name__)


class UnknownJob(RouterError, LookupError):
    pass


def cancel_jobs(store: JobStore, notices: DoneNotices | None, job_ids: list[str]) -> Cancellation:
    """End the waiting ones; ask the workers of the running ones to stop them (needs Redis)."""
    outcome = store.cancel(job_ids)
    if notices is not None:
        notices.publish(outcome.cancelled)  # their waiters learn at once
        try:
            notices.ask_to_stop(outcome.running)
        except RedisError as exc:  # the running ones finish; their records say so
            log.warning("could not ask the workers to stop %d running job(s): %s", len(outcome.running), exc)
    return outcome


class Job:
    """A handle on one job. Every method reads the database, so any process can follow any job."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        kind: str,
        poll_s: float = 0.05,
        notices: DoneNotices | None = None,
        cancel: Callable[[list[str]], Cancellation] | None = None,
        waiting_note: Callable[[JobView], str] = lambda _view: "",
    ):
        self._store = store
        self._waiting_note = waiting_note  # why a job still waits, when it is known (no worker serves its queue)
        self.id = job_id
        self.kind = kind
        self._poll_s = poll_s
        self._notices = notices
        self._cancel = cancel or (lambda job_ids: cancel_jobs(store, notices, job_ids))

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, kind={self.kind!r})"

    def record(self) -> JobView:
        view = self._store.get(self.id)
        if view is None:
            raise UnknownJob(f"job_id: no job {self.id}")
        return view

    def status(self) -> JobStatus:
        return self.record().status

    def attempts(self) -> list[AttemptView]:
        return self._store.attempts(self.id)

    def result(self) -> Result | None:
        """The result when the job succeeded; None while it runs; raises when it failed or was rejected."""
        return self._outcome(self.record())

    def wait(self, timeout: float | None = 60.0) -> Result:
        """Block until the job ends; raises ``JobFailed``, ``JobRejected`` or ``JobTimeout``. With Redis, the
        wait sleeps until the worker's notice (reading the row again at least every ``SAFETY_POLL_S``);
        without it, or while Redis cannot be reached, it polls the row."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._notices is not None:
            try:
                with self._notices.listening(self.id) as sleep:  # subscribed before the first read
                    return self._wait(deadline, timeout, lambda _delay, left: sleep(min(left, SAFETY_POLL_S)))
            except RedisError:
                pass  # the notices are down: poll
        return self._wait(deadline, timeout, lambda delay, left: time.sleep(min(delay, left)))

    def _wait(self, deadline: float | None, timeout: float | None, sleep: Callable[[float, float], object]) -> Result:
        delay = min(0.01, self._poll_s)
        while True:
            view = self.record()
            outcome = self._outcome(view)
            if outcome is not None:
                return outcome
            left = float("inf") if deadline is None else deadline - time.monotonic()
            if left <= 0:
                note = self._waiting_note(view)
                raise JobTimeout(self.id, view.status, f"still {view.status} after {timeout:g} s{note}")
            sleep(delay, left)
            delay = min(delay * 1.5, max(self._poll_s, 0.25))

    def stream(self, timeout: float | None = 300.0) -> Iterator[str]:
        """The generated text's deltas as the model makes them (submit with ``stream=True``), from the first
        whatever the moment one starts reading; then the job's outcome as ``wait`` gives it: nothing more
        once it succeeded, or its error raised. A job that did not stream (another kind, an answer from the
        cache, no Redis) yields its whole text once it ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        view = self.record()
        client = self._notices.client if self._notices is not None else None
        if client is None or (view.is_final and not client.exists(stream_key(self.id))):
            yield from self._whole(self.wait(None if deadline is None else max(0.0, deadline - time.monotonic())))
            return
        streamed = False
        for delta in read_stream(client, self.id):
            if delta is not None:
                streamed = True
                yield delta
                continue
            view = self.record()  # two seconds without a delta: has it ended without streaming?
            if view.is_final and not streamed and not client.exists(stream_key(self.id)):
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(self.id, view.status, f"still {view.status} after {timeout:g} s")
        outcome = self._outcome(self.record())
        if not streamed and outcome is not None:
            yield from self._whole(outcome)

    @staticmethod
    def _whole(result: Result) -> Iterator[str]:
        text = getattr(result, "text", None)
        if text:
            yield text

    def cancel(self) -> Cancellation:
        """Cancel the job: waiting, it ends ``cancelled`` and never runs; running, its worker stops it (a
        local generation at its next token) and records ``cancelled`` with what it made and used; ended, it
        stays as it is. Returns which of the three it was."""
        return self._cancel([self.id])

    @staticmethod
    def _outcome(view: JobView) -> Result | None:
        if view.status == JobStatus.SUCCEEDED and view.result is not None:
            return parse_result(view.result)
        if view.status == JobStatus.FAILED:
            raise JobFailed(view.id, view.status, view.error)
        if view.status == JobStatus.REJECTED:
            raise JobRejected(view.id, view.status, view.error)
        if view.status == JobStatus.CANCELLED:
            raise JobCancelled(view.id, view.status, view.error)
        deadline_s = (view.request or {}).get("deadline_s")
        if view.status == JobStatus.EXPIRED:
            raise JobExpired(view.id, view.status, view.error)
        if view.status in WAITING_STATUSES and past_deadline(view, deadline_s):
            # Its worker records it expired when it takes the message; the caller need not wait for that.
            raise JobExpired(view.id, JobStatus.EXPIRED, f"not started within its deadline of {deadline_s:g} s")
        return None
