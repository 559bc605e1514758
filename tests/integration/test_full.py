"""Full, then freed: the embedded broker on a filesystem that fills up (a small tmpfs), and a Redis broker at
its ``maxmemory``. Nothing written half is ever taken for a message, nothing is lost, and the worker stays
up through both and runs every job once there is room. Each test makes its own filesystem or Redis server
on this machine and removes it afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from llm_router.broker.client import EnqueueFailed, Router
from llm_router.broker.settings import Settings
from llm_router.tasks.records import JobStatus
from tests.conftest import WorkerProcess

# Echo models: the worker needs no torch and no model, only the broker and the database.
CATALOGUE = """
default_tier = "fast"
tier_order = ["fast"]
[tiers.fast]
pool = "remote"
generate = ["echo/generate"]
[models."echo/generate"]
provider = "echo"
"""
SUBMISSIONS = 300


def _wait_all(router: Router, job_ids: list[str], timeout_s: float = 120.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        views = router.store.statuses(job_ids)
        if all(view.is_final for view in views.values()) or time.monotonic() > deadline:
            return {job_id: view.status for job_id, view in views.items()}
        time.sleep(0.2)


# ---- the embedded broker on a full disk -------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """``var/broker`` on a tmpfs of 200 KB (room for a few dozen messages), unmounted afterwards."""
    folder = tmp_path / "var" / "broker"
    folder.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_the_embedded_broker_on_a_full_disk_loses_and_strands_nothing(
    start_worker: Callable[..., WorkerProcess], small_disk: Path, tmp_path: Path
) -> None:
    config = tmp_path / "catalogue.toml"
    config.write_text(CATALOGUE)
    settings = Settings(var_dir=tmp_path / "var", config=config)
    sent: list[str] = []
    refused = 0
    with Router(settings) as router:
        for n in range(SUBMISSIONS):
            try:
                sent.append(router.generate(f"submitted while the disk fills, number {n}", use_cache=False).id)
            except EnqueueFailed:
                refused += 1  # recorded failed, unsent: the caller was told
        assert sent and refused, f"{len(sent)} sent, {refused} refused: the disk should have filled"
        assert not list((small_disk / "queue").glob(".*.part"))  # a message not written whole left nothing
        subprocess.run(["mount", "-o", "remount,size=10m", str(small_disk)], check=True)  # room again
        planted = small_disk / "queue" / "1_from-an-older-version.fast.msg"
        planted.write_text('{"body": "cut sh')  # a message file that cannot be read, whatever wrote it
        embedded = {
            "LLM_ROUTER_BROKER_URL": "",
            "LLM_ROUTER_DATABASE_URL": "",
            "LLM_ROUTER_VAR_DIR": str(settings.var_dir),
        }
        worker = start_worker(
            "fast", "embedded", env={**embedded, "LLM_ROUTER_CONFIG": str(config)}, options=("--pool", "remote")
        )
        statuses = _wait_all(router, sent)
        assert statuses == dict.fromkeys(sent, JobStatus.SUCCEEDED), [
            s for s in statuses.values() if s != JobStatus.SUCCEEDED
        ]
        assert worker.alive()
        # The planted file sorts after the messages written since (their names start with a 0), so the worker
        # reaches it after their jobs end: give it a few polls.
        set_aside = small_disk / "corrupt" / planted.name
        deadline = time.monotonic() + 10
        while not set_aside.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set_aside.exists() and not planted.exists()
        assert worker.log().count("could not be read") == 1
        assert not list((small_disk / "queue").glob("*.msg"))
        worker.stop()


# ---- a Redis broker at its maxmemory ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis server of its own with 8 MB of memory and no eviction, stopped afterwards."""
    port = _free_port()
    server = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--maxmemory", "8mb", "--maxmemory-policy", "noeviction", "--dir", str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "the test's Redis did not start"
            time.sleep(0.05)
    try:
        yield url
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)


def _fill(client: redis.Redis) -> int:
    """Write until the server refuses writes, in ever smaller values (a refused write's own bytes are freed
    again, so the last gap is filled with small ones); how many filler keys it took. The client stays
    connected: closing it would free its buffers, and room with them."""
    written = 0
    for size in (100_000, 1_000, 10):
        try:
            while True:
                client.set(f"filler:{written}", b"x" * size)
                written += 1
        except redis.exceptions.OutOfMemoryError:
            continue
    return written


def test_a_worker_whose_redis_is_full_waits_and_then_runs_every_job(
    start_worker: Callable[..., WorkerProcess], cluster_settings: Settings, small_redis: str, tmp_path: Path
) -> None:
    config = tmp_path / "catalogue.toml"
    config.write_text(CATALOGUE)
    settings = cluster_settings.model_copy(update={"broker_url": small_redis, "config": config})
    with Router(settings) as router:
        jobs = [router.generate(f"waiting while Redis fills, number {n}", use_cache=False).id for n in range(20)]
        client = redis.Redis.from_url(small_redis)
        assert _fill(client) > 0
        with pytest.raises(EnqueueFailed):
            router.generate("refused while Redis is full", use_cache=False)
        room = threading.Timer(8.0, lambda: client.delete(*client.keys("filler:*")))  # room again, 8 s on
        room.start()
        try:
            began = time.monotonic()
            worker = start_worker(
                "fast", "full-redis", env={"LLM_ROUTER_BROKER_URL": small_redis, "LLM_ROUTER_CONFIG": str(config)},
                options=("--pool", "remote"),
            )  # fmt: skip
            assert time.monotonic() - began >= 7.0  # ready only once Redis took writes again, alive meanwhile
        finally:
            room.join()
            client.close()
        statuses = _wait_all(router, jobs)
        assert statuses == dict.fromkeys(jobs, JobStatus.SUCCEEDED)
        refusals = [line for line in worker.log().splitlines() if "maxmemory" in line and "ERROR" in line]
        assert 1 <= len(refusals) <= 2, refusals  # said once a minute, not at every try
        assert worker.alive()
        worker.stop()
