"""The HTTP gateway through real HTTP on 127.0.0.1, over a real worker, Redis and PostgreSQL: the jobs API,
the OpenAI-compatible endpoints through the official ``openai`` client, API keys and tenants, the error
shape, per-tenant limits, and a streaming client that goes away cancelling its job."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from broker.client import Router
from broker.settings import Settings
from tests.conftest import REPO, WorkerProcess, local_catalogue

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
CATALOGUE = local_catalogue("front", generate=True)
CHAT = [{"role": "user", "content": "List five colours, one per line, and say why you like each."}]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], own_catalogue: Path) -> Iterator[WorkerProcess]:
    started = start_worker("front", "front", env={"LLM_ROUTER_CONFIG": str(own_catalogue)})
    yield started
    started.stop()


@pytest.fixture(scope="module")
def gateway(
    cluster_env: dict[str, str], own_catalogue: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = {**cluster_env, "LLM_ROUTER_CONFIG": str(own_catalogue)}
    command = [sys.executable, "-m", "broker.cli.main", "serve", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def keys(own_router: Router) -> dict[str, str]:
    made = {name: own_router.store.create_key(name)[0] for name in ("acme", "globex")}
    made["limited"] = own_router.store.create_key("limited", requests_per_minute=2)[0]
    revoked, view = own_router.store.create_key("acme")
    own_router.store.revoke_key(view.id)
    made["revoked"] = revoked
    return made


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "code", "message", "param"}, body
    return body["error"]  # type: ignore[no-any-return]


def test_every_endpoint_but_healthz_needs_a_live_key(gateway: str, keys: dict[str, str]) -> None:
    assert httpx.get(f"{gateway}/healthz").json() == {"status": "ok"}
    for headers in ({}, auth("llmr_not-a-key"), auth(keys["revoked"]), {"Authorization": "Basic abc"}):
        response = httpx.get(f"{gateway}/v1/models", headers=headers)
        assert response.status_code == 401 and error_of(response)["code"] == "unauthorised"
    assert httpx.get(f"{gateway}/readyz", headers=auth(keys["acme"])).json() == {"status": "ready"}
    names = [model["id"] for model in httpx.get(f"{gateway}/v1/models", headers=auth(keys["acme"])).json()["data"]]
    assert names == ["front", SMOL, MINILM]
    assert httpx.get(f"{gateway}/openapi.json").status_code == 200


def test_the_jobs_api_and_tenant_isolation(worker: WorkerProcess, gateway: str, keys: dict[str, str]) -> None:
    acme, globex = auth(keys["acme"]), auth(keys["globex"])
    created = httpx.post(f"{gateway}/v1/jobs", headers=acme, json={"kind": "embed", "input": "a tenant's sentence"})
    assert created.status_code == 202 and created.json()["status"] in ("queued", "running", "succeeded")
    job_id = created.json()["id"]
    done = httpx.get(f"{gateway}/v1/jobs/{job_id}", params={"wait": 30}, headers=acme, timeout=40).json()
    assert done["status"] == "succeeded" and len(done["result"]["data"][0]["embedding"]) == 384
    for call in (httpx.get, httpx.delete):
        response = call(f"{gateway}/v1/jobs/{job_id}", headers=globex)  # type: ignore[operator]
        assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    usage = httpx.get(f"{gateway}/v1/usage", headers=acme).json()
    assert usage["tenant"] == "acme" and usage["requests"] >= 1 and usage["prompt_tokens"] > 0
    assert httpx.get(f"{gateway}/v1/usage", headers=globex).json()["requests"] == 0
    batch = httpx.post(
        f"{gateway}/v1/batches",
        headers={**acme, "Content-Type": "application/x-ndjson"},
        content="\n".join(json.dumps({"kind": "embed", "input": f"line {n}"}) for n in range(3)) + "\n{}\n",
    ).json()
    assert len(batch["jobs"]) == 3 and "3" in batch["errors"]  # the empty line-object names no kind
    deadline = time.monotonic() + 60
    while httpx.get(f"{gateway}/v1/batches/{batch['id']}", headers=acme).json()["counts"] != {"succeeded": 3}:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert httpx.get(f"{gateway}/v1/batches/{batch['id']}", headers=globex).status_code == 404
    # The same request: answered from the cache for its tenant, run afresh for another.
    for headers, cached in ((acme, True), (globex, False)):
        again = httpx.post(
            f"{gateway}/v1/jobs", headers=headers, json={"kind": "embed", "input": "a tenant's sentence"}
        )
        view = httpx.get(f"{gateway}/v1/jobs/{again.json()['id']}", params={"wait": 30}, headers=headers, timeout=40)
        assert view.json()["status"] == "succeeded" and view.json()["cached"] is cached


def test_bad_input_gets_the_error_shape_naming_the_field(gateway: str, keys: dict[str, str]) -> None:
    acme = auth(keys["acme"])
    response = httpx.post(
        f"{gateway}/v1/jobs", headers=acme, json={"kind": "generate", "prompt": "x", "max_tokens": 9999}
    )
    error = error_of(response)
    assert response.status_code == 400 and error["code"] == "invalid_request" and error["param"] == "max_tokens"
    assert "2048" in error["message"]
    response = httpx.post(
        f"{gateway}/v1/chat/completions", headers=acme, json={"model": "front", "messages": CHAT, "n": 2}
    )
    assert response.status_code == 400 and error_of(response)["param"] == "n"
    response = httpx.post(f"{gateway}/v1/embeddings", headers=acme, json={"model": "no/such-model", "input": "x"})
    assert response.status_code == 400 and error_of(response)["param"] == "model"


def test_the_official_openai_client(worker: WorkerProcess, gateway: str, keys: dict[str, str]) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=keys["globex"], timeout=120)
    answer = client.chat.completions.create(model="front", messages=CHAT, max_tokens=20, temperature=0)  # type: ignore[arg-type]
    assert answer.choices[0].message.content and answer.usage is not None and answer.usage.completion_tokens > 0
    stream = client.chat.completions.create(model=SMOL, messages=CHAT, max_tokens=20, temperature=0, stream=True)  # type: ignore[arg-type]
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) >= 3
    assert "".join(pieces) == answer.choices[0].message.content  # greedy: the same text, streamed
    vectors = client.embeddings.create(model="front", input=["first", "second"])
    assert [item.index for item in vectors.data] == [0, 1] and len(vectors.data[0].embedding) == 384
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gateway}/v1", api_key=keys["revoked"]).models.list()


def test_over_its_limit_a_tenant_gets_429_with_retry_after(gateway: str, keys: dict[str, str]) -> None:
    limited = auth(keys["limited"])
    codes = [httpx.get(f"{gateway}/v1/models", headers=limited) for _ in range(3)]
    assert [r.status_code for r in codes[:2]] == [200, 200]
    assert codes[2].status_code == 429 and error_of(codes[2])["code"] == "rate_limited"
    assert 1 <= int(codes[2].headers["Retry-After"]) <= 61
    assert httpx.get(f"{gateway}/v1/models", headers=auth(keys["acme"])).status_code == 200  # others are not held


def test_a_streaming_client_that_goes_away_cancels_its_job(
    worker: WorkerProcess, gateway: str, keys: dict[str, str], own_router: Router
) -> None:
    body = {"model": "front", "messages": CHAT, "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", f"{gateway}/v1/chat/completions", headers=auth(keys["acme"]), json=body, timeout=60
    ) as response:
        lines = response.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data:"))[5:])
        for line in lines:  # a few deltas, then the client leaves
            if line.startswith("data:") and '"content":"' in line:
                break
    job_id = first["id"].removeprefix("chatcmpl-")
    deadline = time.monotonic() + 60
    while (view := own_router.store.get(job_id)) is None or not view.is_final:
        assert time.monotonic() < deadline, "the job ran on after its client left"
        time.sleep(0.1)
    assert view.status == "cancelled" and view.tenant == "acme"
    assert view.result is not None and view.result["usage"]["completion_tokens"] < 1500


def test_durable_jobs_stream_through_the_jobs_api(worker: WorkerProcess, gateway: str, keys: dict[str, str]) -> None:
    acme = auth(keys["acme"])
    job = httpx.post(
        f"{gateway}/v1/jobs",
        headers=acme,
        json={"kind": "generate", "messages": CHAT, "max_tokens": 16, "temperature": 0, "stream": True},
    ).json()
    deltas, end = [], None
    with httpx.stream("GET", f"{gateway}/v1/jobs/{job['id']}/stream", headers=acme, timeout=120) as response:
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if event == "delta":
                    deltas.append(data["delta"])
                else:
                    end = data
    assert end is not None and end["status"] == "succeeded"
    assert "".join(deltas) == end["result"]["text"] and len(deltas) >= 3


def test_keys_from_the_command_line(cluster_env: dict[str, str], cluster_settings: Settings) -> None:
    run = [sys.executable, "-m", "broker.cli.main", "keys"]
    made = subprocess.run(
        [*run, "create", "--tenant", "initech", "--rpm", "60", "--json"],
        env=cluster_env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    listed = subprocess.run(
        [*run, "list", "--tenant", "initech", "--json"], env=cluster_env, capture_output=True, text=True, cwd=REPO
    )
    (row,) = json.loads(listed.stdout)
    assert row["prefix"] == key["prefix"] and row["requests_per_minute"] == 60 and not row["revoked"]
    assert key["key"] not in listed.stdout  # only the prefix is ever shown again
    with Router(cluster_settings) as router:
        assert router.store.key_for(key["key"]) is not None
        revoked = subprocess.run(
            [*run, "revoke", key["prefix"]], env=cluster_env, capture_output=True, text=True, cwd=REPO
        )
        assert revoked.returncode == 0 and router.store.key_for(key["key"]) is None
    bad = subprocess.run(
        [*run, "create", "--tenant", "no spaces"], env=cluster_env, capture_output=True, text=True, cwd=REPO
    )
    assert bad.returncode == 2 and "--tenant" in bad.stderr


def test_status_shows_the_gateway(gateway: str, cluster_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli.main", "status", "--json"],
        env=cluster_env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    addresses = [entry["address"] for entry in json.loads(done.stdout)["gateways"]]
    assert gateway.removeprefix("http://") in addresses
