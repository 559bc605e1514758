"""Every example under examples/ runs: the FastAPI backend (submit and wait, a stream, its errors mapped), the
nightly batch script (run twice: nothing submitted twice), and the catalogue for servers of one's own, with a
remote worker against a stand-in of vLLM and TEI on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from llm_router.broker.catalogue import load_catalogue
from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.tasks.schemas import EmbedResult, GenerateResult
from llm_router.workers.pools import plan_pool
from tests.conftest import REPO, WorkerProcess, catalogue_env, catalogue_settings, local_catalogue
from tests.support import inference_server as api
from tests.support.inference_server import InferenceServer

EXAMPLES = REPO / "examples"
# "fast" generates and embeds, "mood" classifies; no worker serves "idle".
CATALOGUE = local_catalogue("fast", generate=True, classify="mood", idle="idle")
REMOTE_BROKER = "redis://127.0.0.1:6379/5"  # the local-server catalogue's worker: a broker database of its own


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], own_catalogue: Path) -> Iterator[WorkerProcess]:
    started = start_worker("fast,mood", "examples", env={"LLM_ROUTER_CONFIG": str(own_catalogue)})
    yield started
    started.stop()


@pytest.fixture
def fastapi_client(
    worker: WorkerProcess, cluster_env: dict[str, str], own_catalogue: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    for name, value in {**cluster_env, "LLM_ROUTER_CONFIG": str(own_catalogue)}.items():
        if name.startswith("LLM_ROUTER_"):
            monkeypatch.setenv(name, value)
    from examples.fastapi_app import app as example

    monkeypatch.setattr(example, "WAIT_S", 2.0)  # the unserved tier's job times out soon
    with TestClient(example.app) as client:  # runs the lifespan: one AsyncRouter for the app
        yield client


def test_the_fastapi_example_submits_waits_streams_and_maps_errors(fastapi_client: TestClient) -> None:
    answered = fastapi_client.post("/reply", json={"message": "Name a colour.", "max_tokens": 8})
    assert answered.status_code == 200, answered.text
    reply = answered.json()
    assert reply["text"] and reply["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and reply["job_id"]
    with fastapi_client.stream("GET", "/reply/stream", params={"message": "Count to five."}) as streamed:
        lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3
    assert "".join(json.loads(line[6:])["delta"] for line in lines[:-1]).strip()
    invalid = fastapi_client.post("/reply", json={"message": "x", "tier": "nope"})
    assert invalid.status_code == 422 and invalid.json()["field"] == "tier"
    assert fastapi_client.post("/reply", json={"message": ""}).status_code == 422  # the app's own model refuses it
    waited = fastapi_client.post("/reply", json={"message": "x", "tier": "idle"})
    assert waited.status_code == 504 and waited.json()["job_id"]


def _nightly(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(EXAMPLES / "nightly_batch.py"), *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_the_nightly_batch_answers_every_line_and_submits_nothing_twice(
    worker: WorkerProcess, cluster_env: dict[str, str], own_catalogue: Path, own_router: Router, tmp_path: Path
) -> None:
    env = {**cluster_env, "LLM_ROUTER_CONFIG": str(own_catalogue)}
    reviews = tmp_path / "reviews.jsonl"
    texts = {"r1": "I love this!", "r2": "This is terrible.", "r3": "Wonderful, thank you."}
    reviews.write_text("\n".join(json.dumps({"id": key, "text": text}) for key, text in texts.items()) + "\n")
    labels = tmp_path / "labels.jsonl"
    first = _nightly(env, str(reviews), str(labels), "--kind", "classify", "--tier", "mood")
    assert first.returncode == 0, first.stderr
    answers = {row["id"]: row["answer"] for row in map(json.loads, labels.read_text().splitlines())}
    assert answers == {"r1": "POSITIVE", "r2": "NEGATIVE", "r3": "POSITIVE"}
    again = _nightly(env, str(reviews), str(labels), "--kind", "classify", "--tier", "mood")
    assert again.returncode == 0, again.stderr
    batch_ids = {
        line.split()[1].rstrip(":") for line in (first.stderr + again.stderr).splitlines() if line.startswith("batch ")
    }
    (batch_id,) = batch_ids  # the same batch both nights: found again, not submitted again
    assert sum(own_router.batch_progress(batch_id).values()) == 3
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "no id"}\n')
    refused = _nightly(env, str(broken), str(tmp_path / "out.jsonl"))
    assert refused.returncode == 2 and "broken.jsonl:1" in refused.stderr


def test_the_hugging_face_router_catalogue_plans_a_remote_worker() -> None:
    catalogue = load_catalogue(EXAMPLES / "catalogues" / "hf-router.toml")
    plan = plan_pool("remote", catalogue)
    assert plan.execution_pool == "threads" and set(catalogue.tiers) == {"fast", "balanced", "quality"}
    assert {catalogue.model_spec(model).provider for model in catalogue.models_of_tiers(["fast"])} == {
        "openai",
        "hf-inference",
    }


@pytest.fixture(scope="module")
def servers() -> Iterator[InferenceServer]:
    server = InferenceServer().start()  # stands in for vLLM (OpenAI's routes) and TEI (/embed) alike
    server.on("/v1/chat/completions", api.openai_chat)
    server.on("/embed", api.tei_embed)
    yield server
    server.stop()


def test_the_local_server_catalogue_runs_jobs_on_a_remote_worker(
    servers: InferenceServer,
    start_worker: Callable[..., WorkerProcess],
    cluster_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    text = (EXAMPLES / "catalogues" / "local-server.toml").read_text()
    text = text.replace("http://127.0.0.1:8000", servers.url).replace("http://127.0.0.1:8080", servers.url)
    env = catalogue_env(tmp_path_factory.mktemp("local-server"), text, REMOTE_BROKER)
    worker = start_worker("fast", "local-server", env=env, options=("--pool", "remote"))
    try:
        with Router(catalogue_settings(cluster_settings, env)) as router:
            chat = router.generate(messages=[{"role": "user", "content": "Hi"}], max_tokens=5).wait(timeout=60)
            vectors = router.embed(["one", "two"]).wait(timeout=60)
    finally:
        worker.stop()
    assert isinstance(chat, GenerateResult) and chat.model == "Qwen/Qwen2.5-1.5B-Instruct" and chat.text
    assert isinstance(vectors, EmbedResult) and [item.embedding for item in vectors.data] == api.vectors(["one", "two"])
    assert servers.calls_to("/v1/chat/completions") and servers.calls_to("/embed")
