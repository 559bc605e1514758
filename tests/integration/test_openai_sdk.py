"""The official ``openai`` client against the gateway without surprises: every streamed chunk names its model,
``stream_options.include_usage`` ends a stream with the usage, a field the gateway does not implement is
refused by name, the tenant's files and batches are listed a page at a time; and ``curl -d`` bodies, sent
without a JSON content type, are read as JSON."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llm_router.broker.client import Router
from tests.conftest import WorkerProcess, local_catalogue
from tests.support.gateway import auth, error_of

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CATALOGUE = local_catalogue("front", generate=True)
CHAT = [{"role": "user", "content": "Name three rivers."}]


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], own_catalogue: Path) -> Iterator[WorkerProcess]:
    started = start_worker("front", "sdk", env={"LLM_ROUTER_CONFIG": str(own_catalogue)})
    yield started
    started.stop()


@pytest.fixture(scope="module")
def keys(own_router: Router) -> dict[str, str]:
    return {name: own_router.store.create_key(name)[0] for name in ("acme", "globex")}


@pytest.fixture
def client(gateway: str, keys: dict[str, str]) -> Iterator[Callable[[str], openai.OpenAI]]:
    made: list[openai.OpenAI] = []

    def make(tenant: str) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=f"{gateway}/v1", api_key=keys[tenant], timeout=120))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_the_probes_need_no_key(gateway: str) -> None:
    assert httpx.get(f"{gateway}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{gateway}/readyz").json() == {"status": "ready"}


def test_every_streamed_chunk_names_its_model_and_the_last_carries_the_usage(
    worker: WorkerProcess, client: Callable[[str], openai.OpenAI]
) -> None:
    acme = client("acme")
    for chat in (True, False):
        options: dict[str, Any] = {"model": "front", "max_tokens": 12, "temperature": 0, "stream": True}
        options["stream_options"] = {"include_usage": True}
        if chat:
            chunks = list(acme.chat.completions.create(messages=CHAT, **options))  # type: ignore[arg-type]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            chunks = list(acme.completions.create(prompt="Three rivers:", **options))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert len(chunks) >= 4 and {chunk.model for chunk in chunks} == {SMOL}, [c.model for c in chunks]
        *answer, last = chunks
        assert last.choices == [] and last.usage is not None
        assert all(chunk.choices and chunk.usage is None for chunk in answer)
        assert answer[-1].choices[0].finish_reason in ("length", "stop")
        assert last.usage.completion_tokens > 0 and text
        assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    plain = list(acme.chat.completions.create(model="front", messages=CHAT, max_tokens=4, stream=True))  # type: ignore[arg-type]
    assert all(chunk.choices for chunk in plain)  # no usage chunk unless asked


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logprobs", True),
        ("presence_penalty", 0.5),
        ("frequency_penalty", 1.0),
        ("response_format", {"type": "json_object"}),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
    ],
)
def test_a_field_the_gateway_does_not_implement_is_refused_by_name(
    client: Callable[[str], openai.OpenAI], field: str, value: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client("acme").chat.completions.create(model="front", messages=CHAT, **{field: value})  # type: ignore[call-overload]
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == field and field in error["message"]


def test_the_values_that_ask_for_nothing_are_accepted(
    worker: WorkerProcess, client: Callable[[str], openai.OpenAI]
) -> None:
    answer = client("acme").chat.completions.create(
        model="front",
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=4,
        logprobs=False,
        presence_penalty=0,
        frequency_penalty=0.0,
        response_format={"type": "text"},
    )
    assert answer.model == SMOL and answer.choices[0].message.content


def _batch_file(acme: openai.OpenAI, sentences: list[str]) -> str:
    lines = [
        {"custom_id": f"s{n}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "front", "input": text}}
        for n, text in enumerate(sentences)
    ]
    content = "\n".join(json.dumps(line) for line in lines).encode()
    return acme.files.create(file=("lines.jsonl", io.BytesIO(content)), purpose="batch").id


def test_the_tenants_files_and_batches_are_listed_a_page_at_a_time(
    worker: WorkerProcess, client: Callable[[str], openai.OpenAI]
) -> None:
    acme, globex = client("acme"), client("globex")
    files = []
    for n in range(3):
        files.append(_batch_file(acme, [f"sentence {n}"]))
        time.sleep(0.01)  # distinct upload times: the order is theirs
    other = _batch_file(globex, ["another tenant's"])
    first = acme.files.list(limit=2)
    assert [f.id for f in first.data] == files[:0:-1] and first.has_more is True
    assert [f.id for f in acme.files.list(limit=2)] == files[::-1]  # the SDK follows the cursor to the end
    assert [f.id for f in acme.files.list(order="asc")] == files
    assert [f.id for f in globex.files.list()] == [other]
    batches = []
    for file_id in files[:2]:
        batches.append(acme.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"))
        time.sleep(0.01)
    listed = acme.batches.list(limit=1)
    assert [b.id for b in listed.data] == [batches[-1].id] and listed.has_more is True
    assert [b.id for b in acme.batches.list(limit=1)] == [b.id for b in reversed(batches)]
    assert all(b.input_file_id in files for b in acme.batches.list())
    assert list(globex.batches.list()) == []


def test_a_json_body_sent_as_curl_sends_it_is_read_as_json(
    worker: WorkerProcess, gateway: str, keys: dict[str, str]
) -> None:
    acme = auth(keys["acme"])
    body = json.dumps({"kind": "embed", "input": "curl's own way"})
    for headers in ({"Content-Type": "application/x-www-form-urlencoded"}, {}):
        created = httpx.post(f"{gateway}/v1/jobs", headers={**acme, **headers}, content=body)
        assert created.status_code == 202, created.text
    chat = {"model": "front", "messages": CHAT, "max_tokens": 3}
    answered = httpx.post(
        f"{gateway}/v1/chat/completions",
        headers={**acme, "Content-Type": "application/x-www-form-urlencoded"},
        content=json.dumps(chat),
        timeout=120,
    )
    assert answered.status_code == 200 and answered.json()["model"] == SMOL
    requests = [{"kind": "embed", "input": f"line {n}"} for n in range(2)]
    for content in (json.dumps(requests), "\n".join(json.dumps(r) for r in requests)):
        batch = httpx.post(
            f"{gateway}/v1/batches",
            headers={**acme, "Content-Type": "application/x-www-form-urlencoded"},
            content=content,
        )
        assert batch.status_code == 200 and len(batch.json()["jobs"]) == 2, batch.text
    refused = httpx.post(f"{gateway}/v1/jobs", headers=acme, content="kind=embed&input=x")
    assert refused.status_code == 400 and error_of(refused)["param"] == "body"
