"""Remote backends against a real HTTP server on 127.0.0.1, through a real worker subprocess.

The worker runs with ``LLM_ROUTER_RETRY_DELAY_SCALE=0.25``: the policy's delays are asserted unscaled
from the recorded attempts, and the real gaps between calls at the server are checked against the scaled ones.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.tasks.errors import JobCancelled, JobFailed
from llm_router.tasks.schemas import ClassifyResult, EmbedResult, GenerateResult
from tests.conftest import WorkerProcess, catalogue_env, catalogue_settings
from tests.support import inference_server as api
from tests.support.inference_server import InferenceServer, Reply

BROKER = "redis://127.0.0.1:6379/13"  # a broker database of its own: this worker has its own catalogue
TOKEN = "hf_TESTtoken_9f8e7d6c5b4a_never_logged"
MODEL_KEY = "sk-own-key-for-one-model-4b3a2c1d"  # a model's own key, named by api_key_env in the catalogue
SCALE = 0.25
TIMEOUT_S = 1.5

HF_GEN, HF_EMBED, HF_CLS = "org/hf-gen", "org/hf-embed", "org/hf-cls"
OA_GEN, OA_EMBED = "org/oa-gen", "org/oa-embed"
TEI_EMBED, TEI_CLS = "org/tei-embed", "org/tei-cls"
MISSING, BACKUP = "org/missing-gen", "org/backup-gen"


def _catalogue(url: str) -> str:
    return f"""
default_tier = "fast"
[tiers.fast]
generate = ["{HF_GEN}"]
embed = ["{HF_EMBED}"]
classify = ["{HF_CLS}"]
[tiers.balanced]
generate = ["{OA_GEN}"]
embed = ["{OA_EMBED}"]
classify = ["{TEI_CLS}"]
[tiers.quality]
pool = "cpu"
generate = ["{MISSING}", "{BACKUP}"]
embed = ["{TEI_EMBED}"]
classify = ["{TEI_CLS}"]
[models."{HF_GEN}"]
provider = "hf-inference"
[models."{HF_EMBED}"]
provider = "hf-inference"
[models."{HF_CLS}"]
provider = "hf-inference"
[models."{MISSING}"]
provider = "hf-inference"
[models."{BACKUP}"]
provider = "hf-inference"
[models."{OA_GEN}"]
provider = "openai"
base_url = "{url}"
[models."{OA_EMBED}"]
provider = "openai"
base_url = "{url}"
api_key_env = "TEST_OWN_MODEL_KEY"
[models."{TEI_EMBED}"]
provider = "tei"
base_url = "{url}"
[models."{TEI_CLS}"]
provider = "tei"
base_url = "{url}"
"""


@pytest.fixture(scope="module")
def server() -> Iterator[InferenceServer]:
    server = InferenceServer().start()
    for model in (HF_GEN, BACKUP):
        server.on(f"/models/{model}", api.hf_generate)
    server.on(f"/models/{HF_CLS}", api.hf_classify)
    server.on(f"/models/{HF_EMBED}/pipeline/feature-extraction", api.hf_embed)
    server.on(f"/models/{HF_GEN}/v1/chat/completions", api.openai_chat_streaming)
    server.on("/v1/chat/completions", api.openai_chat_streaming)
    server.on("/v1/completions", api.openai_completion)
    server.on("/v1/embeddings", api.openai_embeddings)
    server.on("/embed", api.tei_embed)
    server.on("/predict", api.tei_predict)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def remote_env(server: InferenceServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return catalogue_env(
        tmp_path_factory.mktemp("remote"),
        _catalogue(server.url),
        BROKER,
        LLM_ROUTER_RETRY_DELAY_SCALE=str(SCALE),
        LLM_ROUTER_REQUEST_TIMEOUT_S=str(TIMEOUT_S),
        HUGGINGFACE_BASE_URL=server.url,
        HUGGINGFACE_API_KEY=TOKEN,
        TEST_OWN_MODEL_KEY=MODEL_KEY,
    )


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess], remote_env: dict[str, str]) -> WorkerProcess:
    return start_worker("fast,balanced,quality", "remote", env=remote_env)


@pytest.fixture(scope="module")
def router(cluster_settings: Settings, remote_env: dict[str, str]) -> Iterator[Router]:
    with Router(catalogue_settings(cluster_settings, remote_env)) as router:
        yield router


@pytest.fixture
def fresh(server: InferenceServer) -> InferenceServer:
    server.reset()
    return server


def _attempts(router: Router, job_id: str) -> list[Any]:
    return router.get(job_id).attempts()


# ---- success, every backend and kind -----------------------------------------------------------------


def test_hf_inference_serves_all_three_kinds(worker: WorkerProcess, router: Router, fresh: InferenceServer) -> None:
    story = router.generate("Once upon a time", tier="fast", max_tokens=20, temperature=0.5).wait(timeout=30)
    assert isinstance(story, GenerateResult) and "goes on" in story.text and story.model == HF_GEN
    (call,) = fresh.calls_to(f"/models/{HF_GEN}")
    assert call.body["inputs"] == "Once upon a time"
    parameters = call.body["parameters"]
    assert parameters["max_new_tokens"] == 20 and parameters["temperature"] == 0.5
    assert parameters["return_full_text"] is False and parameters["top_k"] == 50 and parameters["top_p"] == 0.9
    assert parameters["repetition_penalty"] == 1.1
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"  # the token is really sent...
    assert story.usage.total_tokens > 0 and story.usage.estimated  # no tokenizer for org/hf-gen here

    chat = router.generate(messages=[{"role": "user", "content": "Capital of France?"}], tier="fast").wait(timeout=30)
    assert isinstance(chat, GenerateResult) and "Paris" in chat.text and chat.usage.total_tokens == 19

    vectors = router.embed(["one", "three"], tier="fast").wait(timeout=30)
    assert isinstance(vectors, EmbedResult) and [v.embedding[0] for v in vectors.data] == [3.0, 5.0]

    labels = router.classify(["I love it", "meh"], tier="fast", use_cache=False).wait(timeout=30)
    assert isinstance(labels, ClassifyResult) and labels.labels[0].label == "POSITIVE"
    assert labels.data[1].labels[0].label == "NEGATIVE"
    (classify_call,) = fresh.calls_to(f"/models/{HF_CLS}")
    assert classify_call.headers.get("x-use-cache") == "false"


def test_openai_compatible_serves_chat_completion_and_embeddings(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    chat = router.generate(messages=[{"role": "user", "content": "Capital?"}], tier="balanced").wait(timeout=30)
    assert isinstance(chat, GenerateResult) and chat.finish_reason == "stop"
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (12, 7) and not chat.usage.estimated
    completion = router.generate("Once", tier="balanced", max_tokens=5).wait(timeout=30)
    assert isinstance(completion, GenerateResult) and completion.text == " there was a queue."
    (call,) = fresh.calls_to("/v1/completions")
    assert call.body["model"] == OA_GEN and call.body["max_tokens"] == 5 and "top_k" not in call.body
    vectors = router.embed(["ab", "abcd"], tier="balanced").wait(timeout=30)
    assert isinstance(vectors, EmbedResult) and [v.embedding[0] for v in vectors.data] == [2.0, 4.0]  # by index
    assert fresh.calls_to("/v1/embeddings")[0].headers["Authorization"] == f"Bearer {MODEL_KEY}"
    assert fresh.calls_to("/v1/completions")[0].headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("tier", "path"), [("balanced", "/v1/chat/completions"), ("fast", f"/models/{HF_GEN}/v1/chat/completions")]
)
def test_a_streamed_chat_reads_the_servers_event_stream(
    worker: WorkerProcess, router: Router, fresh: InferenceServer, tier: str, path: str
) -> None:
    chat = [{"role": "user", "content": "Capital of France?"}]
    job = router.generate(messages=chat, tier=tier, stream=True, use_cache=False)
    deltas = list(job.stream(30))
    assert deltas == ["Paris", " is", " the", " capital", " of", " France", "."]  # as the server sent them
    record = job.record()
    assert record.status == "succeeded" and record.result is not None
    assert "".join(deltas) == record.result["text"] == "Paris is the capital of France."
    assert record.result["usage"]["total_tokens"] == 19  # the server's own count, from its last event
    (call,) = fresh.calls_to(path)
    assert call.body["stream"] is True and call.body["stream_options"] == {"include_usage": True}
    assert call.headers["Accept"] == "text/event-stream"


def test_a_stream_cut_off_is_retried_and_carried_on_without_repeating_a_delta(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    cut = api.chat_chunks(OA_GEN, ["Paris", " is", " the"])[:4]  # no finish_reason: the connection just closes
    fresh.script("/v1/chat/completions", Reply(200, events=cut, cut=True))
    chat = [{"role": "user", "content": "Capital of France?"}]
    job = router.generate(messages=chat, tier="balanced", stream=True, use_cache=False)
    deltas = list(job.stream(30))
    assert deltas == ["Paris", " is", " the", " capital", " of", " France", "."]  # each once
    record = job.record()
    assert record.result is not None and record.result["text"] == "".join(deltas)
    assert [a.status for a in job.attempts()] == ["failed", "succeeded"]
    assert "ended before its finish_reason" in (job.attempts()[0].error or "")


def test_a_cancelled_remote_stream_closes_the_connection_and_keeps_what_came(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    pieces = [f" word{n}" for n in range(40)]
    events = api.chat_chunks(OA_GEN, pieces, {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45})
    fresh.script("/v1/chat/completions", Reply(200, events=events, event_delay_s=0.1))
    job = router.generate(
        messages=[{"role": "user", "content": "Count."}], tier="balanced", stream=True, use_cache=False
    )
    deltas: list[str] = []
    with pytest.raises(JobCancelled):
        for delta in job.stream(30):
            deltas.append(delta)
            if len(deltas) == 3:
                job.cancel()
    record = job.record()
    assert record.status == "cancelled" and record.result is not None
    assert "".join(deltas) == record.result["text"]
    assert 3 <= len(deltas) < len(pieces)  # it stopped early
    deadline = time.monotonic() + 10
    while fresh.closed_early == 0:  # the server finds the client gone at its next write
        assert time.monotonic() < deadline, "the worker did not close the stream"
        time.sleep(0.05)


def test_tei_serves_embeddings_and_classification(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    vectors = router.embed("hello", tier="quality").wait(timeout=30)
    assert isinstance(vectors, EmbedResult) and vectors.data[0].embedding == [5.0, 1.0, 0.5]
    assert fresh.calls_to("/embed")[0].body == {"inputs": ["hello"], "normalize": True, "truncate": True}
    labels = router.classify("I love queues", tier="quality").wait(timeout=30)
    assert isinstance(labels, ClassifyResult) and labels.labels[0].label == "POSITIVE"


# ---- the retry policy, over real sockets ---------------------------------------------------------------


def _gaps(server: InferenceServer, path: str) -> list[float]:
    times = [call.at for call in server.calls_to(path)]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def test_503_twice_then_200_succeeds_after_three_attempts(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    path = f"/models/{HF_GEN}"
    fresh.script(
        path,
        Reply(503, {"error": "Model org/hf-gen is currently loading"}),  # no hint: 5 s·(0+1)
        Reply(503, {"error": "Model org/hf-gen is currently loading", "estimated_time": 2.0}),  # the hint: 2 s
    )
    job = router.generate("Loading test", tier="fast")
    assert isinstance(job.wait(timeout=60), GenerateResult)
    attempts = _attempts(router, job.id)
    assert [(a.http_status, a.delay_s, a.status) for a in attempts] == [
        (503, 5.0, "failed"),
        (503, 2.0, "failed"),
        (None, None, "succeeded"),
    ]
    assert "currently loading" in (attempts[0].error or "")
    gaps = _gaps(fresh, path)
    assert gaps[0] >= 5.0 * SCALE * 0.9 and gaps[1] >= 2.0 * SCALE * 0.9


def test_429_waits_for_retry_after_not_the_exponential_default(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    fresh.script("/embed", Reply(429, {"error": "Too many requests"}, headers={"Retry-After": "2"}))
    job = router.embed("rate limited", tier="quality")
    assert isinstance(job.wait(timeout=60), EmbedResult)
    attempts = _attempts(router, job.id)
    assert [(a.http_status, a.delay_s) for a in attempts] == [(429, 2.0), (None, None)]  # 2 s, not 1 s·2⁰
    assert _gaps(fresh, "/embed")[0] >= 2.0 * SCALE * 0.9


def test_500_then_200(worker: WorkerProcess, router: Router, fresh: InferenceServer) -> None:
    fresh.script("/v1/embeddings", Reply(500, {"error": "internal"}))
    job = router.embed("server error", tier="balanced")
    assert isinstance(job.wait(timeout=60), EmbedResult)
    assert [(a.http_status, a.delay_s) for a in _attempts(router, job.id)] == [(500, 1.0), (None, None)]


def test_a_dropped_connection_is_retried(worker: WorkerProcess, router: Router, fresh: InferenceServer) -> None:
    fresh.script("/predict", Reply(drop=True))
    job = router.classify("I love retries", tier="quality")
    assert isinstance(job.wait(timeout=60), ClassifyResult)
    first, second = _attempts(router, job.id)
    assert "NetworkError" in (first.error or "") and first.delay_s == 1.0 and second.status == "succeeded"


def test_a_read_timeout_is_retried(worker: WorkerProcess, router: Router, fresh: InferenceServer) -> None:
    fresh.script("/v1/chat/completions", Reply(delay_s=TIMEOUT_S + 1.5, body={"late": True}))
    job = router.generate(messages=[{"role": "user", "content": "slow?"}], tier="balanced")
    assert isinstance(job.wait(timeout=60), GenerateResult)
    first, second = _attempts(router, job.id)
    assert "timed out" in (first.error or "") and first.delay_s == 1.0 and second.status == "succeeded"


def test_401_fails_at_once_without_retry(worker: WorkerProcess, router: Router, fresh: InferenceServer) -> None:
    fresh.script(f"/models/{HF_CLS}", Reply(401, {"error": "Invalid credentials in Authorization header"}))
    job = router.classify("unauthorised", tier="fast")
    with pytest.raises(JobFailed, match="401") as caught:
        job.wait(timeout=30)
    assert "Unauthorised" in str(caught.value) and TOKEN not in str(caught.value)
    (attempt,) = _attempts(router, job.id)
    assert attempt.http_status == 401 and attempt.delay_s is None
    assert len(fresh.calls_to(f"/models/{HF_CLS}")) == 1


def test_404_moves_to_the_next_model_of_the_chain(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    result = router.generate("who answers?", tier="quality").wait(timeout=30)
    assert isinstance(result, GenerateResult) and result.model == BACKUP and result.tier == "quality"
    (call_missing,) = fresh.calls_to(f"/models/{MISSING}")
    assert call_missing.body["inputs"] == "who answers?"


def test_a_404_cools_the_model_down_and_later_jobs_pass_it_over(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    # The 404 in the test above cooled org/missing-gen down cluster-wide (60 s, scaled to 15 s here).
    job = router.generate("the path", tier="quality")
    job.wait(timeout=30)
    attempts = _attempts(router, job.id)
    assert [(a.model, a.http_status, a.status) for a in attempts] == [
        (MISSING, None, "skipped"),
        (BACKUP, None, "succeeded"),
    ]
    assert "cooling down" in (attempts[0].error or "")
    assert fresh.calls_to(f"/models/{MISSING}") == []


def test_no_worker_slot_sleeps_through_a_countdown(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    # One slot (concurrency 1). The first job waits out a 503 of 20 s (5 s scaled); others run meanwhile.
    fresh.script(f"/models/{HF_GEN}", Reply(503, {"error": "loading", "estimated_time": 20.0}))
    slow = router.generate("slow one", tier="fast")
    quick = [router.embed(f"quick {i}", tier="fast") for i in range(3)]
    for job in quick:
        job.wait(timeout=30)
    assert slow.status() == "retrying"
    slow.wait(timeout=60)
    retry_started = _attempts(router, slow.id)[1].started_at
    for job in quick:
        finished = job.record().finished_at
        assert finished is not None and finished < retry_started


def test_error_bodies_that_echo_the_token_are_redacted(
    worker: WorkerProcess, router: Router, fresh: InferenceServer
) -> None:
    # Gateways echo the request's headers in their error bodies; the echo must not carry the key along.
    fresh.script("/v1/chat/completions", Reply(401, {"error": f"bad credentials: Authorization: Bearer {TOKEN}"}))
    job = router.generate(messages=[{"role": "user", "content": "echoed 401"}], tier="balanced", fallback="none")
    with pytest.raises(JobFailed, match="401") as caught:
        job.wait(timeout=30)
    assert TOKEN not in str(caught.value) and "Bearer ***" in str(caught.value)
    fresh.script(f"/models/{HF_EMBED}/pipeline/feature-extraction", Reply(500, {"error": f"upstream saw {TOKEN}"}))
    retried = router.embed("echoed 500", tier="fast")
    assert isinstance(retried.wait(timeout=30), EmbedResult)
    first = _attempts(router, retried.id)[0]
    assert first.http_status == 500 and TOKEN not in (first.error or "") and "***" in (first.error or "")


def test_the_token_appears_nowhere(worker: WorkerProcess, router: Router, pg_url: str) -> None:
    # Runs after the jobs above: the token was sent to the server (asserted there) and must be nowhere else:
    # not in the database, the worker's log, or any message or key left on the broker.
    engine = create_engine(pg_url)
    with engine.connect() as connection:
        for table in ("jobs", "attempts", "usage"):
            dump = " ".join(str(row) for row in connection.execute(text(f"SELECT * FROM {table}")))
            assert dump and TOKEN not in dump and MODEL_KEY not in dump, table
    engine.dispose()
    assert TOKEN not in worker.log() and MODEL_KEY not in worker.log()
    client = redis.Redis.from_url(BROKER)
    for key in client.keys("*"):
        kind = client.type(key)
        values = client.lrange(key, 0, -1) if kind == b"list" else [client.dump(key) or b""]
        assert all(TOKEN.encode() not in value and MODEL_KEY.encode() not in value for value in values), key
    client.close()


def test_models_status_checks_and_waits(
    server: InferenceServer, remote_env: dict[str, str], cluster_env: dict[str, str]
) -> None:
    from click.testing import CliRunner

    from llm_router.cli.main import cli

    server.reset()
    env = {**cluster_env, **remote_env}
    path = f"/models/{HF_GEN}"
    server.script(path, Reply(503, {"error": "loading", "estimated_time": 1}), Reply(503, {"error": "loading"}))
    waited = CliRunner().invoke(cli, ["models", "status", HF_GEN, "--wait", "--interval", "0.1", "--json"], env=env)
    assert waited.exit_code == 0, waited.output
    assert '"status": "ready"' in waited.output and '"checks": 3' in waited.output
    assert all(call.method == "GET" for call in server.calls_to(path))

    server.script(path, Reply(503, {"error": "loading"}))
    once = CliRunner().invoke(cli, ["models", "status", HF_GEN], env=env)
    assert once.exit_code == 1 and "loading" in once.output

    missing = CliRunner().invoke(cli, ["models", "status", "org/nowhere"], env=env)
    assert missing.exit_code == 1 and "error" in missing.output
