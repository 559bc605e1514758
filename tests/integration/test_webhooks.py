"""Completion webhooks on the real Redis, PostgreSQL and a worker, to a receiver on 127.0.0.1: a job's final
record arrives signed, a 500 is retried by countdown and every attempt recorded, a batch's webhook comes
once when its last job ends, and an address that is not public is refused on submission and at delivery."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.broker.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, verify_signature
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.schemas import EmbedResult
from ops.bench.faults import descendants
from tests.conftest import WorkerProcess, local_catalogue
from tests.support.hostile_receiver import HostileReceiver
from tests.support.inference_server import Call, InferenceServer, Reply

SECRET = "webhook-signing-key-for-tests"
DEADLINE_S = 3  # a delivery's whole deadline on this module's worker
CATALOGUE = local_catalogue("hooked")


@pytest.fixture(scope="module")
def receiver() -> Iterator[InferenceServer]:
    server = InferenceServer().start()
    server.on("/hook", lambda _body: Reply(200, {"ok": True}))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], own_catalogue: Path) -> Iterator[WorkerProcess]:
    # The worker may call 127.0.0.1 only; 127.0.0.2 (loopback all the same) stays refused.
    env = {
        "LLM_ROUTER_CONFIG": str(own_catalogue),
        "LLM_ROUTER_WEBHOOK_SECRET": SECRET,
        "LLM_ROUTER_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
        "LLM_ROUTER_WEBHOOK_TIMEOUT_S": str(DEADLINE_S),
    }
    started = start_worker("hooked", "hooked", env=env)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def router(cluster_settings: Settings, own_catalogue: Path) -> Iterator[Router]:
    update = {"config": own_catalogue, "webhook_allowed_networks": "127.0.0.0/8"}
    with Router(cluster_settings.model_copy(update=update)) as router:
        yield router


def calls_of(server: InferenceServer, delivery: str | None = None, *, at_least: int = 1) -> list[Call]:
    deadline = time.monotonic() + 60
    while True:
        calls = [c for c in server.calls_to("/hook") if delivery is None or delivery in str(c.body)]
        if len(calls) >= at_least:
            return calls
        assert time.monotonic() < deadline, f"{len(calls)} deliveries after 60 s"
        time.sleep(0.05)


def delivered(router: Router, subject_id: str) -> Any:
    """The webhook once its delivery ended (the worker claims it just after it wakes the job's waiters)."""
    deadline = time.monotonic() + 60
    while True:
        found = router.webhooks(subject_id)
        if found and found[0].status != "pending":
            (webhook,) = found
            return webhook
        assert time.monotonic() < deadline, f"the webhook was still {found[0].status if found else 'unclaimed'}"
        time.sleep(0.05)


def test_a_jobs_final_record_arrives_signed_after_a_500_is_retried(
    worker: WorkerProcess, router: Router, receiver: InferenceServer
) -> None:
    receiver.script("/hook", Reply(500, {"error": "busy"}))
    job = router.embed("a sentence whose end is announced", use_cache=False, callback_url=f"{receiver.url}/hook")
    job.wait(60)
    first, second = calls_of(receiver, job.id, at_least=2)
    assert first.raw == second.raw  # the same body, sent again
    assert second.at - first.at >= 0.9  # after the first retry's countdown (1 s)
    for call in (first, second):
        assert verify_signature(SECRET, call.headers[SIGNATURE_HEADER], call.raw)
        assert not verify_signature("another key", call.headers[SIGNATURE_HEADER], call.raw)
        assert not verify_signature(SECRET, call.headers[SIGNATURE_HEADER], call.raw.replace(b"succeeded", b"failed!!"))
        assert call.headers[EVENT_HEADER] == "job.ended"
    body = second.body
    assert body["event"] == "job.ended" and body["delivery"] == second.headers[DELIVERY_HEADER]
    assert body["job"]["id"] == job.id and body["job"]["status"] == "succeeded"
    assert body["job"]["result"] == job.result().model_dump(mode="json")  # type: ignore[union-attr]
    webhook = delivered(router, job.id)
    assert webhook.status == "delivered"
    assert [(t.number, t.status_code) for t in webhook.tries] == [(1, 500), (2, 200)]
    assert webhook.tries[0].error == "HTTP 500" and webhook.tries[1].error is None
    time.sleep(1.0)
    assert len(calls_of(receiver, job.id)) == 2  # delivered once it succeeded: no third call


def test_a_batchs_webhook_comes_once_when_its_last_job_ends(
    worker: WorkerProcess, router: Router, receiver: InferenceServer
) -> None:
    requests = [{"kind": "embed", "input": f"batch sentence {n}", "use_cache": False} for n in range(6)]
    submitted = router.batch(requests, callback_url=f"{receiver.url}/hook")
    for job in submitted.jobs.values():
        job.wait(60)
    (call,) = calls_of(receiver, submitted.batch_id)
    assert verify_signature(SECRET, call.headers[SIGNATURE_HEADER], call.raw)
    assert call.body["event"] == "batch.ended"
    assert call.body["batch"]["id"] == submitted.batch_id
    assert call.body["batch"]["counts"] == {"succeeded": 6}
    assert delivered(router, submitted.batch_id).status == "delivered"
    assert not any(submitted.jobs[0].id in str(c.body) for c in receiver.calls_to("/hook"))  # no per-job ones
    time.sleep(1.0)
    assert len(calls_of(receiver, submitted.batch_id)) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data/",  # a cloud's metadata service
        "http://[::1]:8080/hook",
        "http://[::ffff:192.168.0.1]/hook",
    ],
)
def test_a_callback_to_an_address_that_is_not_public_is_refused_on_submission(
    cluster_settings: Settings, own_catalogue: Path, url: str, count_rows: Callable[[str], int]
) -> None:
    before = count_rows("SELECT count(*) FROM jobs")
    with Router(cluster_settings.model_copy(update={"config": own_catalogue})) as router:
        with pytest.raises(InvalidRequest, match=r"callback_url: .* not a public address") as raised:
            router.embed("never sent", callback_url=url)
        assert raised.value.field == "callback_url"
        with pytest.raises(InvalidRequest, match="callback_url"):
            router.batch([{"kind": "embed", "input": "never sent"}], callback_url=url)
    assert count_rows("SELECT count(*) FROM jobs") == before


def test_a_worker_refuses_to_deliver_to_an_address_outside_its_allowed_networks(
    worker: WorkerProcess, router: Router, receiver: InferenceServer
) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    job = router.embed("allowed by the producer, not by the worker", callback_url=f"http://127.0.0.2:{port}/hook")
    job.wait(60)
    webhook = delivered(router, job.id)
    assert webhook.status == "refused"
    assert len(webhook.tries) == 1 and webhook.tries[0].status_code is None
    assert "127.0.0.2 is 127.0.0.2, not a public address" in (webhook.tries[0].error or "")
    assert not any(job.id in str(c.body) for c in receiver.calls_to("/hook"))


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/hook", "absolute http:// or https://"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https://example.com/a b", "spaces"),
        ("/relative", "absolute"),
    ],
)
def test_a_malformed_callback_url_is_refused_naming_the_field(own_router: Router, url: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=f"callback_url.*{words}"):
        own_router.embed("never sent", callback_url=url)


# ---- receivers that misbehave on purpose ------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileReceiver]:
    server = HostileReceiver().start()
    yield server
    server.stop()


def _peak_rss_mb(worker: WorkerProcess) -> float:
    """The highest resident memory any process of the worker has had (VmHWM)."""
    peaks = []
    for pid in [worker.process.pid, *descendants(worker.process.pid)]:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            peaks += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")]
    return max(peaks)


def _first_try(router: Router, subject_id: str) -> Any:
    deadline = time.monotonic() + 60
    while not (found := router.webhooks(subject_id)) or not found[0].tries:
        assert time.monotonic() < deadline, "no delivery was tried"
        time.sleep(0.05)
    return found[0].tries[0]


def test_a_slow_or_silent_receiver_holds_no_slot_and_a_huge_answer_is_never_read(
    worker: WorkerProcess, router: Router, hostile: HostileReceiver
) -> None:
    before_mb = _peak_rss_mb(worker)
    announced = {
        path: router.embed(f"announced to {path}", use_cache=False, callback_url=f"{hostile.url}/{path}")
        for path in ("drip", "silent", "huge")
    }
    for job in announced.values():
        job.wait(timeout=60)
    deadline = time.monotonic() + 60
    while not hostile.requests:  # a delivery reached its receiver, which holds it
        assert time.monotonic() < deadline, "no delivery was made"
        time.sleep(0.05)
    # The worker has one slot: model jobs run while the deliveries wait on their receivers.
    others = [router.embed(f"an ordinary job, number {n}", use_cache=False) for n in range(5)]
    for job in others:
        assert isinstance(job.wait(timeout=20), EmbedResult)
    drip = delivered(router, announced["drip"].id)  # its answer's status came first; its body is never read
    assert drip.status == "delivered" and (drip.tries[0].latency_ms or 0) < DEADLINE_S * 1000
    assert delivered(router, announced["huge"].id).status == "delivered"
    silent = _first_try(router, announced["silent"].id)  # one deadline for the whole delivery
    assert silent.status_code is None and f"no answer within {DEADLINE_S} s" in (silent.error or "")
    assert (silent.latency_ms or 0) < (DEADLINE_S + 2) * 1000
    assert _peak_rss_mb(worker) - before_mb < 100  # a 400 MB answer never entered the worker
    assert worker.alive()
