"""Token streaming from the bundled SmolLM2 through a real worker and Redis: deltas as they are made, equal to
the recorded text when joined, the same from the start for a late reader, sync and asyncio, on the command
line; a job that did not stream yields its whole text; a retry that makes another text restarts the stream."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from llm_router.broker.async_client import AsyncRouter
from llm_router.broker.client import Job, Router
from llm_router.broker.settings import Settings
from llm_router.broker.streams import read_stream, streamed_text
from llm_router.tasks.errors import JobCancelled, StreamRestarted
from llm_router.workers.streaming import StreamWriter
from tests.conftest import REPO, WorkerProcess

# A chat request at temperature 0: SmolLM2 answers it at length, the same way every time (a bare prompt may
# get an end token at once).
CHAT = [{"role": "user", "content": "List five colours, one per line, and say why you like each."}]
STORY = [{"role": "user", "content": "Write a very long story about the sea, chapter after chapter."}]
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CATALOGUE = f"""
default_tier = "chorus"
tier_order = ["chorus"]
[tiers.chorus]                  # this module's own worker: generations that wait together run together
generate = ["{SMOL}"]
[models."{SMOL}"]
provider = "local"
task = "generate"
dtype = "bfloat16"
"""


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker("fast", "streaming")


@pytest.fixture(scope="module")
def router(cluster_settings: Settings) -> Iterator[Router]:
    with Router(cluster_settings) as router:
        yield router


def test_deltas_arrive_as_they_are_made_and_join_to_the_recorded_text(worker: WorkerProcess, router: Router) -> None:
    job = router.generate(messages=CHAT, max_tokens=40, temperature=0, stream=True, use_cache=False)
    arrivals: list[tuple[float, str]] = []
    for delta in job.stream(120):
        arrivals.append((time.monotonic(), delta))
    record = job.record()
    assert record.status == "succeeded" and record.result is not None
    text = record.result["text"]
    assert "".join(delta for _, delta in arrivals) == text
    assert len(arrivals) >= 5  # token by token, not the whole text at the end
    assert arrivals[-1][0] - arrivals[0][0] > 0.05  # spread over the generation
    # A reader that comes after the end gets every delta from the start.
    assert list(job.stream(10)) == [delta for _, delta in arrivals]


def test_a_job_that_did_not_stream_yields_its_whole_text(worker: WorkerProcess, router: Router) -> None:
    job = router.generate(messages=CHAT, max_tokens=12, temperature=0, use_cache=False)
    (whole,) = list(job.stream(120))
    record = job.record()
    assert record.result is not None and whole == record.result["text"]


def test_asyncio_streaming(worker: WorkerProcess, cluster_settings: Settings) -> None:
    async def run() -> tuple[list[str], str]:
        async with AsyncRouter(cluster_settings) as router:
            job = await router.generate(messages=CHAT, max_tokens=30, temperature=0, stream=True, use_cache=False)
            deltas = [delta async for delta in job.stream(120)]
            record = await job.record()
            assert record.result is not None
            return deltas, record.result["text"]

    deltas, text = asyncio.run(run())
    assert len(deltas) >= 5 and "".join(deltas) == text


def test_a_cancelled_stream_ends_with_the_cancel(worker: WorkerProcess, router: Router) -> None:
    job = router.generate(messages=STORY, max_tokens=2048, temperature=0, stream=True, use_cache=False)
    deltas: list[str] = []
    with pytest.raises(JobCancelled):
        for delta in job.stream(120):
            deltas.append(delta)
            if len(deltas) == 5:
                job.cancel()
    record = job.record()
    assert record.status == "cancelled" and record.result is not None
    assert "".join(deltas) == record.result["text"]  # what was streamed is what was recorded


def test_the_command_prints_the_text_as_it_comes(worker: WorkerProcess, cluster_env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "llm_router.cli.main", "submit", "generate", "--messages", json.dumps(CHAT)]
    command += ["--max-tokens", "20", "--temperature", "0"]
    done = subprocess.run(
        [*command, "--stream"], env=cluster_env, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_readers_of_a_stream_restarted_by_a_retry_with_another_text(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    writer, job_id = StreamWriter(redis_url), f"restart-{uuid.uuid4()}"
    first = writer.sink(job_id)
    first("Once upon")
    first(" a time")
    early = read_stream(client, job_id)
    assert [next(early), next(early)] == ["Once upon", " a time"]
    second = writer.sink(job_id)  # the retry, after the first attempt was cut off
    second("Once upon")  # the same so far: nothing sent again
    second(" the hill")  # another text from here
    with pytest.raises(StreamRestarted):
        next(early)  # the two deltas it read are void
    writer.end(job_id, "succeeded")
    assert [delta for delta in read_stream(client, job_id) if delta is not None] == ["Once upon the hill"]
    assert streamed_text(client, job_id) == "Once upon the hill"


@pytest.fixture(scope="module")
def chorus(start_worker: Callable[..., WorkerProcess], own_catalogue: Path) -> Iterator[WorkerProcess]:
    worker = start_worker("chorus", "chorus", env={"LLM_ROUTER_CONFIG": str(own_catalogue)})
    yield worker
    worker.stop()


def _waiting_together(router: Router, n: int, max_tokens: int) -> list[Job]:
    """``n`` sampled streamed generations queued behind a long one, so the worker takes them together."""
    busy = router.generate(messages=STORY, max_tokens=64, temperature=0, use_cache=False)
    deadline = time.monotonic() + 120
    while busy.status() != "running":  # the worker is held: what comes now waits, together
        assert time.monotonic() < deadline, "the first job did not start"
        time.sleep(0.02)
    sampled = {"temperature": 0.8, "max_tokens": max_tokens, "stream": True, "use_cache": False}
    topics = ["the moon", "a river", "old trains", "a lighthouse"]
    return [
        router.generate(messages=[{"role": "user", "content": f"Write about {topics[i]}."}], **sampled)
        for i in range(n)
    ]


def test_generations_batched_together_each_stream_their_own_text(chorus: WorkerProcess, own_router: Router) -> None:
    jobs = _waiting_together(own_router, 3, 40)
    streams = [list(job.stream(180)) for job in jobs]
    assert len({job.attempts()[0].started_at for job in jobs}) == 1  # one group, one model call
    for job, deltas in zip(jobs, streams, strict=True):
        record = job.record()
        assert record.status == "succeeded" and record.result is not None
        assert len(deltas) >= 3 and "".join(deltas) == record.result["text"]
    assert len({"".join(deltas) for deltas in streams}) == 3  # each its own text


def test_a_job_cancelled_in_a_batched_generation_stops_alone(chorus: WorkerProcess, own_router: Router) -> None:
    jobs = _waiting_together(own_router, 3, 160)
    deltas: list[str] = []
    with pytest.raises(JobCancelled):
        for delta in jobs[0].stream(180):
            deltas.append(delta)
            if len(deltas) == 3:
                jobs[0].cancel()
    others = [job.wait(180) for job in jobs[1:]]
    stopped = jobs[0].record()
    assert stopped.status == "cancelled" and stopped.result is not None
    assert "".join(deltas) == stopped.result["text"]
    assert stopped.result["usage"]["completion_tokens"] < max(o.usage.completion_tokens for o in others)  # type: ignore[union-attr]
    assert len({job.attempts()[0].started_at for job in jobs}) == 1
