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

import pytest
import redis

from broker.async_client import AsyncRouter
from broker.client import Router
from broker.settings import Settings
from broker.streams import read_stream, streamed_text
from tasks.errors import JobCancelled, StreamRestarted
from tests.conftest import REPO, WorkerProcess
from workers.streaming import StreamWriter

# A chat request at temperature 0: SmolLM2 answers it at length, the same way every time (a bare prompt may
# get an end token at once).
CHAT = [{"role": "user", "content": "List five colours, one per line, and say why you like each."}]
STORY = [{"role": "user", "content": "Write a very long story about the sea, chapter after chapter."}]


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
    command = [sys.executable, "-m", "broker.cli.main", "submit", "generate", "--messages", json.dumps(CHAT)]
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
