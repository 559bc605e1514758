"""The clients a backend engineer already has, against the gateway without surprises. The official ``openai``
client: every streamed chunk names its model, ``stream_options.include_usage`` ends a stream with the usage,
a field the gateway does not implement is refused by name, the tenant's files and batches are listed a page
at a time. ``huggingface_hub.InferenceClient``: the Inference API's tasks at ``/models/{model}``, in its own
shapes. And ``curl -d`` bodies, sent without a JSON content type, are read as JSON."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import huggingface_hub.constants
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from llm_router.broker.client import Router
from tests.conftest import SENTIMENT, WorkerProcess, local_catalogue
from tests.support.gateway import auth, error_of

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# "front" generates and embeds, "mood" classifies; no worker serves "idle".
CATALOGUE = local_catalogue("front", generate=True, classify="mood", idle="idle")
CHAT = [{"role": "user", "content": "Name three rivers."}]


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], own_catalogue: Path) -> Iterator[WorkerProcess]:
    started = start_worker("front,mood", "clients", env={"LLM_ROUTER_CONFIG": str(own_catalogue)})
    yield started
    started.stop()


@pytest.fixture(scope="module")
def keys(own_router: Router) -> dict[str, str]:
    # Tenants of this module's own (a tenant is a name: another module's "acme" would share its files).
    suffix = uuid.uuid4().hex[:8]
    return {name: own_router.store.create_key(f"{name}-{suffix}")[0] for name in ("acme", "globex")}


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


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub refuses every request under HF_HUB_OFFLINE=1 (the suite's, for the workers), even one to
    # 127.0.0.1; the client's process needs it unset, as the docs say.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def inference(gateway: str, keys: dict[str, str]) -> Callable[[str], InferenceClient]:
    """``InferenceClient`` for the acme tenant, pointed at a model's (or tier's) route of the gateway."""
    return lambda path: InferenceClient(base_url=f"{gateway}/models/{path}", token=keys["acme"], timeout=120)


def test_inference_client_embeds_compares_and_classifies_in_the_apis_shapes(
    worker: WorkerProcess, inference: Callable[[str], InferenceClient], own_router: Router
) -> None:
    guitar = "A man is playing a guitar."
    vectors = inference(MINILM).feature_extraction(guitar)
    assert vectors.shape == (1, 384)
    expected = own_router.embed(guitar).wait(timeout=60)
    assert vectors[0] == pytest.approx(expected.data[0].embedding, abs=1e-5)
    tier_vectors = inference("front/pipeline/feature-extraction").feature_extraction([guitar, "Hello"])
    assert tier_vectors.shape == (2, 384)  # a tier's name, its task named by the route
    close, far = inference(MINILM).sentence_similarity(
        guitar, other_sentences=["Someone is strumming a guitar.", "The stock market crashed today."]
    )
    assert close > 0.6 > 0.2 > far  # 0.719 and -0.078 with this model
    labels = inference(SENTIMENT).text_classification("I love this!")
    assert labels[0].label == "POSITIVE" and labels[0].score > 0.9
    assert len(inference(SENTIMENT).text_classification("This is terrible.", top_k=1)) == 1


def test_inference_client_generates_whole_streamed_and_chats(
    worker: WorkerProcess, inference: Callable[[str], InferenceClient], gateway: str, keys: dict[str, str]
) -> None:
    smol = inference(SMOL)
    whole = smol.text_generation("Once upon a time", max_new_tokens=8, do_sample=False)
    assert whole.strip()
    cached = list(smol.text_generation("Once upon a time", max_new_tokens=8, do_sample=False, stream=True))
    assert cached == [whole, ""]  # the same call again: the cache's answer, whole, then the last event
    afresh = InferenceClient(base_url=smol.model, token=smol.token, headers={"x-use-cache": "false"}, timeout=120)
    streamed = list(afresh.text_generation("Once upon a time", max_new_tokens=8, do_sample=False, stream=True))
    assert len([token for token in streamed if token]) >= 2 and "".join(streamed) == whole
    full = smol.text_generation("Once upon a time", max_new_tokens=8, do_sample=False, return_full_text=True)
    assert full == "Once upon a time" + whole
    # A parameter the cluster does not implement: refused in the API's words, which the client reads, drops the
    # parameter with a warning, and asks again.
    with pytest.warns(UserWarning, match="watermark"):
        again = inference(SMOL).text_generation("Once upon a time", max_new_tokens=8, do_sample=False, watermark=True)
    assert again == whole
    reply = smol.chat_completion(CHAT, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert reply.choices[0].message.content and reply.model == SMOL
    by_tier = InferenceClient(base_url=f"{gateway}/v1", token=keys["acme"], timeout=120)
    assert by_tier.chat_completion(CHAT, model="front", max_tokens=8, temperature=0).model == SMOL  # type: ignore[arg-type]


def test_inference_api_errors_come_in_its_shape(gateway: str, keys: dict[str, str]) -> None:
    acme = auth(keys["acme"])
    waiting = httpx.post(f"{gateway}/models/idle", headers=acme, json={"inputs": "x"})
    assert waiting.status_code == 503
    assert waiting.json()["estimated_time"] == 10.0 and "idle" in waiting.json()["error"]
    ambiguous = httpx.post(f"{gateway}/models/front", headers=acme, json={"inputs": "x"})
    assert ambiguous.status_code == 400 and "/models/front/pipeline/" in ambiguous.json()["error"]
    unknown = httpx.post(f"{gateway}/models/no-org/no-model", headers=acme, json={"inputs": "x"})
    assert unknown.status_code == 400 and "no-org/no-model" in unknown.json()["error"]
    task = httpx.post(f"{gateway}/models/{MINILM}/pipeline/image-to-text", headers=acme, json={"inputs": "x"})
    assert task.status_code == 400 and "image-to-text" in task.json()["error"]
    with pytest.raises(HfHubHTTPError) as refused:
        InferenceClient(base_url=f"{gateway}/models/{MINILM}", token="llmr_not-a-key").feature_extraction("x")
    assert refused.value.response.status_code == 401
