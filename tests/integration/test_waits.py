"""Waits that wake on the worker's notice, sync and asyncio, on the real Redis, PostgreSQL and a worker: few
row reads while a long job runs, polling when the notices are down, and 200 concurrent asyncio waits on one
pub/sub connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis

from llm_router.broker.async_client import AsyncRouter
from llm_router.broker.client import Job, Router
from llm_router.broker.notifications import SAFETY_POLL_S, WAITS_CLIENT_NAME, DoneNotices
from llm_router.broker.settings import Settings
from llm_router.tasks.schemas import EmbedResult
from tests.conftest import WorkerProcess

LONG = [f"passage {i}: " + "a long sentence about the sea and its lighthouses. " * 20 for i in range(256)]


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker("fast", "waits")


class Counted(Job):
    """A job handle that counts the times it reads its row."""

    def __init__(self, job: Job, router: Router, notices: DoneNotices | None):
        super().__init__(router.store, job.id, job.kind, router.settings.wait_poll_s, notices)
        self.reads = 0

    def record(self):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().record()


def test_a_wait_sleeps_on_the_notice_instead_of_polling(worker: WorkerProcess, cluster_settings: Settings) -> None:
    with Router(cluster_settings) as router:
        notices = DoneNotices(cluster_settings.resolved_broker_url)
        job = Counted(router.embed(LONG, use_cache=False), router, notices)
        result = job.wait(120)
        record = job.record()
        notices.close()
    assert isinstance(result, EmbedResult) and len(result.data) == 256
    assert record.started_at is not None and record.finished_at is not None
    ran_s = (record.finished_at - record.created_at).total_seconds()
    assert ran_s > 1.0  # long enough for polling to read the row a dozen times
    # The first read, one per safety poll, the read the notice causes, and the record() above.
    assert job.reads <= ran_s / SAFETY_POLL_S + 4


def test_a_wait_polls_when_the_notices_cannot_be_reached(worker: WorkerProcess, cluster_settings: Settings) -> None:
    with Router(cluster_settings) as router:
        unreachable = DoneNotices("redis://127.0.0.1:1/0")
        job = Counted(router.embed("the notices are down", use_cache=False), router, unreachable)
        result = job.wait(60)
    assert isinstance(result, EmbedResult) and job.reads >= 1


def test_two_hundred_asyncio_waits_share_one_pub_sub_connection(
    worker: WorkerProcess, cluster_settings: Settings
) -> None:
    texts = [f"concurrent sentence number {i}" for i in range(200)]
    url = cluster_settings.resolved_broker_url

    async def run() -> tuple[list[EmbedResult], list[tuple[int, int]]]:
        async with AsyncRouter(cluster_settings) as router:
            # A long job holds the worker's one process, so the 200 jobs are still queued while their waits
            # subscribe: the samples below see many jobs waiting at once, however fast the machine.
            blocker = await router.embed(LONG, use_cache=False)
            while (await blocker.record()).started_at is None:
                await asyncio.sleep(0.02)
            jobs, waits = [], []
            for text in texts:
                job = await router.embed(text, use_cache=False)
                jobs.append(job)
                waits.append(asyncio.create_task(job.wait(120)))
            samples = []  # (connections subscribed, job channels subscribed), taken while the waits run
            while not all(wait.done() for wait in waits):
                samples.append(await asyncio.to_thread(_subscriptions, url))
                await asyncio.sleep(0.01)
            results = await asyncio.gather(*waits)
            again = await (await router.get(jobs[0].id)).result()
            assert again is not None and again.model_dump() == results[0].model_dump()
            await blocker.wait(120)
            return results, samples  # type: ignore[return-value]

    results, samples = asyncio.run(run())
    assert [len(r.data[0].embedding) for r in results] == [384] * 200
    most_waiting = max(channels for _, channels in samples)
    assert most_waiting >= 20, samples  # the samples saw many jobs waiting at once...
    assert {connections for connections, channels in samples if channels} == {1}  # ...on one connection
    vectors = {tuple(r.data[0].embedding[:4]) for r in results}
    assert len(vectors) == 200  # each wait got its own job's answer


def test_an_asyncio_wait_polls_without_notices(worker: WorkerProcess, cluster_settings: Settings) -> None:
    async def run() -> EmbedResult:
        async with AsyncRouter(cluster_settings) as router:
            await router.notices.close()  # type: ignore[union-attr]
            router.notices = None
            job = await router.embed("no notices here", use_cache=False)
            return await job.wait(60)  # type: ignore[return-value]

    assert len(asyncio.run(run()).data[0].embedding) == 384


def _subscriptions(url: str) -> tuple[int, int]:
    """The asyncio waits' pub/sub connections and the job channels they hold, from one CLIENT LIST."""
    client = redis.Redis.from_url(url)
    try:
        subscribed = [
            int(entry["sub"])
            for entry in client.client_list()
            if entry.get("name") == WAITS_CLIENT_NAME and int(entry.get("sub", 0))
        ]
    finally:
        client.close()
    return len(subscribed), sum(subscribed)


def test_sync_waits_keep_one_subscription_and_pass_over_what_an_earlier_wait_left(
    cluster_settings: Settings,
) -> None:
    notices = DoneNotices(cluster_settings.resolved_broker_url)
    made = 0
    pubsub = notices.client.pubsub

    def counted() -> redis.client.PubSub:
        nonlocal made
        made += 1
        return pubsub()

    notices.client.pubsub = counted  # type: ignore[method-assign]
    try:
        for n in range(20):
            with notices.listening(f"waits-{n}") as sleep:
                notices.publish([f"waits-{n}"])
                assert sleep(5.0)
        with notices.listening("waits-earlier"):
            pass
        notices.publish(["waits-earlier"])  # a late notice, on the connection the next wait reuses
        with notices.listening("waits-next") as sleep:
            assert not sleep(0.3)  # the earlier job's notice does not wake this one
            notices.publish(["waits-next"])
            assert sleep(5.0)
    finally:
        notices.close()
    assert made == 1
