"""The HTTP gateway through real HTTP on 127.0.0.1, over a real worker, Redis and PostgreSQL: the jobs API,
the OpenAI-compatible endpoints through the official ``openai`` client, API keys and tenants, the error
shape, per-tenant limits, and a streaming client that goes away cancelling its job."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from tests.conftest import REPO, WorkerProcess, local_catalogue
from tests.support.gateway import auth, error_of

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# "front" serves every test; "broken" names a model that is not there (its jobs fail); "limited" takes one
# request a minute (its second job is deferred); no worker serves "unserved".
CATALOGUE = (
    local_catalogue("front", generate=True).replace(
        'tier_order = ["front"]', 'tier_order = ["front", "broken", "limited", "unserved"]'
    )
    + f"""
[tiers.broken]
embed = ["org/missing-embedder"]
[tiers.limited]
embed = ["{MINILM}"]
requests_per_minute = 1
[tiers.unserved]
embed = ["{MINILM}"]
[models."org/missing-embedder"]
provider = "local"
task = "embed"
"""
)
CHAT = [{"role": "user", "content": "List five colours, one per line, and say why you like each."}]
BUDGET, PER_MINUTE = 100, 100  # tokens: the "frugal" tenant's budget, the "paced" tenant's per minute


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], own_catalogue: Path) -> Iterator[WorkerProcess]:
    env = {"LLM_ROUTER_CONFIG": str(own_catalogue), "LLM_ROUTER_COOLDOWN_S": "0"}
    started = start_worker("front,broken,limited", "front", env=env)
    yield started
    started.stop()


@pytest.fixture
def openai_client(gateway: str, keys: dict[str, str]) -> Iterator[Callable[..., openai.OpenAI]]:
    """The official client for a tenant, closed after the test (its pooled sockets with it)."""
    made: list[openai.OpenAI] = []

    def make(tenant: str, **options: Any) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=f"{gateway}/v1", api_key=keys[tenant], **options))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture(scope="module")
def keys(own_router: Router) -> dict[str, str]:
    made = {name: own_router.store.create_key(name)[0] for name in ("acme", "globex")}
    made["limited"] = own_router.store.create_key("limited", requests_per_minute=2)[0]
    made["frugal"] = own_router.store.create_key("frugal", budget_tokens=BUDGET)[0]
    made["paced"] = own_router.store.create_key("paced", tokens_per_minute=PER_MINUTE)[0]
    made["operators"] = own_router.store.create_key("operators")[0]
    revoked, view = own_router.store.create_key("acme")
    own_router.store.revoke_key(view.id)
    made["revoked"] = revoked
    return made


def test_every_endpoint_but_the_probes_needs_a_live_key(gateway: str, keys: dict[str, str]) -> None:
    assert httpx.get(f"{gateway}/healthz").json() == {"status": "ok"}
    for headers in ({}, auth("llmr_not-a-key"), auth(keys["revoked"]), {"Authorization": "Basic abc"}):
        response = httpx.get(f"{gateway}/v1/models", headers=headers)
        assert response.status_code == 401 and error_of(response)["code"] == "unauthorised"
    assert httpx.get(f"{gateway}/readyz").json() == {"status": "ready"}  # a probe has no key
    names = [model["id"] for model in httpx.get(f"{gateway}/v1/models", headers=auth(keys["acme"])).json()["data"]]
    assert names == ["front", "broken", "limited", "unserved", SMOL, MINILM, "org/missing-embedder"]
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


def test_the_official_openai_client(worker: WorkerProcess, openai_client: Callable[..., openai.OpenAI]) -> None:
    client = openai_client("globex", timeout=120)
    answer = client.chat.completions.create(model="front", messages=CHAT, max_tokens=20, temperature=0)  # type: ignore[arg-type]
    assert answer.choices[0].message.content and answer.usage is not None and answer.usage.completion_tokens > 0
    stream = client.chat.completions.create(model=SMOL, messages=CHAT, max_tokens=20, temperature=0, stream=True)  # type: ignore[arg-type]
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) >= 3
    assert "".join(pieces) == answer.choices[0].message.content  # greedy: the same text, streamed
    vectors = client.embeddings.create(model="front", input=["first", "second"])
    assert [item.index for item in vectors.data] == [0, 1] and len(vectors.data[0].embedding) == 384
    with pytest.raises(openai.AuthenticationError):
        openai_client("revoked").models.list()


def test_over_its_limit_a_tenant_gets_429_with_retry_after(gateway: str, keys: dict[str, str]) -> None:
    limited = auth(keys["limited"])
    codes = [
        httpx.post(f"{gateway}/v1/jobs", headers=limited, json={"kind": "embed", "input": f"counted, number {n}"})
        for n in range(3)
    ]
    assert [r.status_code for r in codes[:2]] == [202, 202]
    assert codes[2].status_code == 429 and error_of(codes[2])["code"] == "rate_limited"
    assert 1 <= int(codes[2].headers["Retry-After"]) <= 61
    # Limits apply to work admitted, never to reads; and one tenant's limit holds no other.
    for path in ("/v1/models", f"/v1/jobs/{codes[0].json()['id']}", "/v1/usage"):
        assert httpx.get(f"{gateway}{path}", headers=limited).status_code == 200, path
    assert httpx.post(f"{gateway}/v1/jobs", headers=auth(keys["acme"]), json={"kind": "embed", "input": "x"}).is_success


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
    run = [sys.executable, "-m", "llm_router.cli.main", "keys"]
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
        [sys.executable, "-m", "llm_router.cli.main", "status", "--json"],
        env=cluster_env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    addresses = [entry["address"] for entry in json.loads(done.stdout)["gateways"]]
    assert gateway.removeprefix("http://") in addresses


def _wait_for_batch(client: openai.OpenAI, batch_id: str, statuses: set[str]) -> Any:
    deadline = time.monotonic() + 120
    while (batch := client.batches.retrieve(batch_id)).status not in statuses:
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.3)
    return batch


def test_the_batch_api_end_to_end(
    worker: WorkerProcess,
    tmp_path: Path,
    openai_client: Callable[..., openai.OpenAI],
) -> None:
    client = openai_client("acme", timeout=60)
    lines = [_batch_line(f"row-{n}", "/v1/embeddings", {"model": "front", "input": f"row {n}"}) for n in range(5)]
    lines.append(_batch_line("bad", "/v1/embeddings", {"model": "nope/nope", "input": "x"}))
    source = tmp_path / "batch.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    uploaded = client.files.create(file=source, purpose="batch")
    assert uploaded.bytes == source.stat().st_size
    assert client.files.content(uploaded.id).text == source.read_text()
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    done = _wait_for_batch(client, batch.id, {"completed"})
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (6, 5, 1)
    assert done.output_file_id is not None and done.error_file_id is not None
    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in output] == [f"row-{n}" for n in range(5)]  # in input order
    assert all(len(line["response"]["body"]["data"][0]["embedding"]) == 384 for line in output)
    (error,) = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert error["custom_id"] == "bad" and "model" in error["error"]["message"]
    other = openai_client("globex")
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(uploaded.id)


def _batch_line(custom_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _numbered(chat: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    return [{**chat[0], "content": f"{chat[0]['content']} ({n})"}, *chat[1:]]


def test_a_cancelled_batch_keeps_its_finished_lines(
    worker: WorkerProcess,
    tmp_path: Path,
    openai_client: Callable[..., openai.OpenAI],
) -> None:
    client = openai_client("acme", timeout=60)
    # Each line asks something of its own: the same greedy chat thirty times would be answered from the cache
    # once the first had run, all at once, and there would be nothing left to cancel.
    lines = [
        _batch_line(
            f"c{n}",
            "/v1/chat/completions",
            {"model": "front", "messages": _numbered(CHAT, n), "max_tokens": 24, "temperature": 0},
        )
        for n in range(30)
    ]
    source = tmp_path / "chats.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    uploaded = client.files.create(file=source, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while (counts := client.batches.retrieve(batch.id).request_counts) is None or counts.completed < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    ended = _wait_for_batch(client, batch.id, {"cancelled"})
    assert ended.request_counts is not None and 1 <= ended.request_counts.completed < 30
    assert ended.request_counts.completed + ended.request_counts.failed == 30
    output = client.files.content(ended.output_file_id or "").text.splitlines()
    assert len(output) == ended.request_counts.completed  # the finished lines are kept
    first = json.loads(output[0])["response"]["body"]
    assert first["object"] == "chat.completion" and first["choices"][0]["message"]["content"]


def test_no_request_the_openapi_document_allows_gets_a_5xx(gateway: str, keys: dict[str, str]) -> None:
    """schemathesis, bounded: generated requests to every operation of /openapi.json, none answered 5xx."""
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{gateway}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,fuzzing",
        "--max-examples",
        "15",
        "--generation-deterministic",
        "--request-timeout",
        "30",
        "--header",
        f"Authorization: Bearer {keys['globex']}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    document = httpx.get(f"{gateway}/openapi.json").json()
    operations = sum(len(methods) for methods in document["paths"].values())
    fuzzed = re.search(r"Fuzzing .*?(\d+) passed", done.stdout, re.S)
    assert fuzzed is not None and int(fuzzed.group(1)) == operations >= 18, done.stdout[-3000:]


def scrape(gateway: str, key: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{gateway}/metrics", headers=auth(key))
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def moved(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    """How much the samples of ``name`` whose labels include ``labels`` went up."""

    def total(samples: dict[Any, float]) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())

    return total(after) - total(before)


def test_metrics_follow_the_jobs(worker: WorkerProcess, gateway: str, keys: dict[str, str]) -> None:
    assert httpx.get(f"{gateway}/metrics", headers=auth(keys["acme"])).status_code == 404  # operators only
    before = scrape(gateway, keys["operators"])
    acme = auth(keys["acme"])

    def run(body: dict[str, Any]) -> dict[str, Any]:
        job = httpx.post(f"{gateway}/v1/jobs", headers=acme, json=body).json()
        return httpx.get(f"{gateway}/v1/jobs/{job['id']}", params={"wait": 60}, headers=acme, timeout=70).json()

    sentence = f"a sentence for the metrics at {time.time()}"
    assert run({"kind": "embed", "input": sentence, "tier": "front"})["status"] == "succeeded"
    assert run({"kind": "embed", "input": sentence, "tier": "front"})["cached"] is True
    assert run({"kind": "embed", "input": "never embedded", "tier": "broken", "fallback": "none"})["status"] == "failed"
    first = run({"kind": "embed", "input": "the minute's one", "tier": "limited", "use_cache": False})
    assert first["status"] == "succeeded"
    deferred = httpx.post(
        f"{gateway}/v1/jobs",
        headers=acme,
        json={"kind": "embed", "input": "later", "tier": "limited", "use_cache": False},
    ).json()
    deadline = time.monotonic() + 30
    while (after := scrape(gateway, keys["operators"])) and moved(
        before, after, "llm_router_deferrals_total", tier="limited"
    ) < 1:
        assert time.monotonic() < deadline, "no deferral was counted"
        time.sleep(0.2)
    assert moved(before, after, "llm_router_jobs_ended_total", tier="front", status="succeeded") >= 2
    assert moved(before, after, "llm_router_cache_hits_total", tier="front") >= 1
    assert moved(before, after, "llm_router_jobs_ended_total", tier="broken", status="failed") >= 1
    assert moved(before, after, "llm_router_attempts_total", model="org/missing-embedder", status="failed") >= 1
    assert moved(before, after, "llm_router_tokens_total", tier="front", type="prompt") > 0
    waiting = sum(v for (n, ls), v in after.items() if n == "llm_router_queue_jobs" and dict(ls)["queue"] == "limited")
    assert waiting >= 1  # the deferred job waits for its minute, counted in jobs, not messages
    assert moved(before, after, "llm_router_latency_seconds_gcount", stage="end_to_end") >= 3
    httpx.delete(f"{gateway}/v1/jobs/{deferred['id']}", headers=acme)


def test_completions_cancel_and_file_info(
    worker: WorkerProcess,
    gateway: str,
    keys: dict[str, str],
    tmp_path: Path,
    openai_client: Callable[..., openai.OpenAI],
) -> None:
    client = openai_client("globex", timeout=120)
    completion = client.completions.create(model="front", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert completion.object == "text_completion" and completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    source = tmp_path / "one.jsonl"
    source.write_text(json.dumps(_batch_line("x", "/v1/embeddings", {})) + "\n")
    uploaded = client.files.create(file=source, purpose="batch")
    info = client.files.retrieve(uploaded.id)
    assert (info.id, info.purpose, info.bytes, info.filename) == (
        uploaded.id,
        "batch",
        source.stat().st_size,
        "one.jsonl",
    )
    globex = auth(keys["globex"])
    body = {"kind": "generate", "messages": CHAT, "max_tokens": 1500, "temperature": 0}
    job = httpx.post(f"{gateway}/v1/jobs", headers=globex, json=body).json()
    cancelled = httpx.delete(f"{gateway}/v1/jobs/{job['id']}", headers=globex).json()
    assert cancelled["id"] == job["id"]
    ended = httpx.get(f"{gateway}/v1/jobs/{job['id']}", params={"wait": 60}, headers=globex, timeout=70).json()
    assert ended["status"] == "cancelled"  # waiting: never run; running: stopped at its next token


# ---- tenants' tokens are reserved when work is admitted -----------------------------------------------------


def _tenant_tokens(count_rows: Callable[[str], int], tenant: str) -> int:
    return count_rows(f"SELECT coalesce(sum(total_tokens), 0) FROM usage WHERE tenant = '{tenant}'")


def test_a_budget_holds_against_a_batch_and_an_exhausted_tenant_still_reads(
    worker: WorkerProcess, gateway: str, keys: dict[str, str], count_rows: Callable[[str], int]
) -> None:
    frugal = auth(keys["frugal"])
    lines = [{"kind": "generate", "messages": CHAT, "max_tokens": 64} for _ in range(200)]
    refused = httpx.post(f"{gateway}/v1/batches", headers=frugal, json=lines)
    assert refused.status_code == 429, refused.text  # refused whole, saying what is left
    assert f"has {BUDGET} of its {BUDGET} budget tokens left" in error_of(refused)["message"]
    assert count_rows("SELECT count(*) FROM jobs WHERE tenant = 'frugal'") == 0
    small = httpx.post(f"{gateway}/v1/batches", headers=frugal, json=[{"kind": "embed", "input": "a few tokens"}])
    assert small.status_code == 200, small.text
    chat = {"model": "front", "messages": CHAT, "max_tokens": 20, "temperature": 0}
    answered = httpx.post(f"{gateway}/v1/chat/completions", headers=frugal, json=chat, timeout=120)
    assert answered.status_code == 200, answered.text
    spent = _tenant_tokens(count_rows, "frugal")
    assert spent <= BUDGET
    # What a job reserved is settled against what it used, within seconds of its end: the rest is left.
    left = f"has {BUDGET - spent} of its {BUDGET} budget tokens left"

    def refusal() -> str:
        response = httpx.post(f"{gateway}/v1/chat/completions", headers=frugal, json=chat)
        assert response.status_code == 429, response.text
        return str(error_of(response)["message"])

    deadline = time.monotonic() + 30
    while left not in (message := refusal()):
        assert time.monotonic() < deadline, message
        time.sleep(0.5)
    # Past its budget, a tenant reads everything it paid for.
    job_id = answered.json()["id"].removeprefix("chatcmpl-")
    for path in (f"/v1/jobs/{job_id}", f"/v1/batches/{small.json()['id']}", "/v1/usage", "/v1/models"):
        assert httpx.get(f"{gateway}{path}", headers=frugal).status_code == 200, path
    assert httpx.get(f"{gateway}/v1/usage", headers=frugal).json()["total_tokens"] == spent


def test_thirty_chats_at_once_spend_no_more_than_the_tokens_per_minute(
    worker: WorkerProcess, gateway: str, keys: dict[str, str], count_rows: Callable[[str], int]
) -> None:
    while time.time() % 60 > 40:  # all in one minute's window
        time.sleep(1)

    def ask(n: int) -> int:  # thirty different chats: none is answered from the cache, for nothing
        asked = [{"role": "user", "content": f"{CHAT[0]['content']} You are client {n}."}]
        chat = {"model": "front", "messages": asked, "max_tokens": 20, "temperature": 0}
        return httpx.post(
            f"{gateway}/v1/chat/completions", headers=auth(keys["paced"]), json=chat, timeout=120
        ).status_code

    with ThreadPoolExecutor(30) as pool:
        codes = list(pool.map(ask, range(30)))
    assert codes.count(200) >= 1 and set(codes) <= {200, 429}, codes
    assert _tenant_tokens(count_rows, "paced") <= PER_MINUTE  # what was admitted fits the minute's tokens


# ---- no worker, retries, hostile bodies ---------------------------------------------------------------------


def test_a_request_no_worker_would_serve_is_answered_503_at_once_and_makes_no_job(
    gateway: str, keys: dict[str, str], count_rows: Callable[[str], int]
) -> None:
    before = count_rows("SELECT count(*) FROM jobs WHERE tier = 'unserved'")
    began = time.monotonic()
    response = httpx.post(
        f"{gateway}/v1/embeddings", headers=auth(keys["acme"]), json={"model": "unserved", "input": "x"}
    )
    assert time.monotonic() - began < 5
    error = error_of(response)
    assert response.status_code == 503 and error["code"] == "no_worker" and "queue unserved" in error["message"]
    assert int(response.headers["Retry-After"]) > 0
    assert count_rows("SELECT count(*) FROM jobs WHERE tier = 'unserved'") == before


def test_a_retried_openai_request_with_its_idempotency_key_makes_one_job(
    worker: WorkerProcess, gateway: str, keys: dict[str, str], count_rows: Callable[[str], int]
) -> None:
    headers = {**auth(keys["acme"]), "Idempotency-Key": "order-77"}
    body = {"model": "front", "input": "asked twice, answered once"}
    first, second = (httpx.post(f"{gateway}/v1/embeddings", headers=headers, json=body, timeout=60) for _ in range(2))
    assert first.status_code == second.status_code == 200 and first.json() == second.json()
    assert count_rows("SELECT count(*) FROM jobs WHERE idempotency_key = 'acme/order-77'") == 1


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    # (path, request, the field its 400 names)
    ("/v1/batches", {"content": "[" * 100_000, "headers": {"Content-Type": "application/json"}}, "body"),
    ("/v1/batches", {"content": "[" * 100_000, "headers": {"Content-Type": "application/jsonl"}}, "body"),
    ("/v1/jobs", {"content": "[" * 100_000, "headers": {"Content-Type": "application/json"}}, "body"),
    ("/v1/chat/completions", {"json": {"model": "front", "messages": CHAT, "stream": "yes"}}, "stream"),
    ("/v1/completions", {"json": {"model": "front", "prompt": "hi", "stream": 1}}, "stream"),
    ("/v1/chat/completions", {"json": {"model": "front", "messages": CHAT, "n": True}}, "n"),
    ("/v1/batches", {"json": {"input_file_id": ["a"], "endpoint": "/v1/embeddings"}}, "input_file_id"),
    ("/v1/batches", {"json": {"input_file_id": "f", "endpoint": {}, "completion_window": "24h"}}, "endpoint"),
    (
        "/v1/batches",
        {"json": {"input_file_id": "f", "endpoint": "/v1/embeddings", "completion_window": []}},
        "completion_window",
    ),
    (
        "/v1/batches",
        {"json": {"input_file_id": "f", "endpoint": "/v1/embeddings", "metadata": {"a": [[[1]]]}}},
        "metadata",
    ),
]


@pytest.mark.parametrize(("path", "request_", "field"), HOSTILE, ids=[f"{p} {f}" for p, _, f in HOSTILE])
def test_a_malformed_request_is_a_400_naming_the_field(
    gateway: str, keys: dict[str, str], path: str, request_: dict[str, Any], field: str
) -> None:
    response = httpx.post(
        f"{gateway}{path}", **{**request_, "headers": {**auth(keys["acme"]), **request_.get("headers", {})}}
    )
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == field


def test_a_nul_in_a_batch_file_or_its_name_is_a_400(gateway: str, keys: dict[str, str]) -> None:
    line = json.dumps(
        {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "front", "input": "x"}}
    )
    for name, content in (("batch.jsonl", f"{line}\n\x00\n"), ("bad\x00name.jsonl", f"{line}\n")):
        # Written by hand: a client library would escape the NUL in the name; a hostile one sends it as it is.
        body = (
            f'--edge\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--edge\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/jsonl\r\n\r\n{content}\r\n--edge--\r\n"
        ).encode()
        headers = {**auth(keys["acme"]), "Content-Type": "multipart/form-data; boundary=edge"}
        response = httpx.post(f"{gateway}/v1/files", headers=headers, content=body)
        assert response.status_code == 400 and error_of(response)["param"] == "file", response.text
    # A NUL written as JSON's escape is text: the file is kept, and the line that holds it is refused alone.
    escaped = json.dumps(
        {
            "custom_id": "nul\u0000id",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "front", "input": "\u0000"},
        }
    )
    files = {"file": ("escaped.jsonl", f"{line}\n{escaped}\n".encode(), "application/jsonl")}
    uploaded = httpx.post(f"{gateway}/v1/files", headers=auth(keys["acme"]), data={"purpose": "batch"}, files=files)
    assert uploaded.status_code == 200, uploaded.text
    batch = httpx.post(
        f"{gateway}/v1/batches",
        headers=auth(keys["acme"]),
        json={"input_file_id": uploaded.json()["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"},
    )
    assert batch.status_code == 200, batch.text
    assert batch.json()["request_counts"]["total"] == 2
