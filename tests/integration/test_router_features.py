"""Fallback chains, tier escalation, cooldowns, cluster-wide rate limits and the cache, with two real
worker processes on the real Redis and Postgres, and a scripted Inference API on 127.0.0.1."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.cli.main import cli
from llm_router.tasks.errors import JobFailed
from llm_router.tasks.schemas import ClassifyResult, EmbedResult, GenerateResult
from tests.conftest import WorkerProcess, empty_redis_db
from tests.support import inference_server as api
from tests.support.inference_server import InferenceServer, Reply

BROKER = "redis://127.0.0.1:6379/14"
SCALE = 0.1
LIMIT_PER_MINUTE = 3

CATALOGUE = """
default_tier = "fast"
[tiers.fast]
generate = ["org/always-500", "org/second-gen"]
embed = ["org/down-a", "org/down-b"]
classify = ["org/cls-404", "org/cls-backup"]
[tiers.balanced]
generate = ["org/second-gen"]
embed = ["org/balanced-embed"]
classify = ["org/cls-backup"]
[tiers.quality]
requests_per_minute = {limit}
classify = ["org/limited-cls"]
[defaults]
max_tokens = 20
"""


def always(status: int) -> Callable[[object], Reply]:
    return lambda _body: Reply(status, {"error": f"scripted {status}"})


@pytest.fixture(scope="module")
def server() -> Iterator[InferenceServer]:
    server = InferenceServer().start()
    server.on("/models/org/always-500", always(500))
    server.on("/models/org/second-gen", api.hf_generate)
    for model in ("org/balanced-embed",):
        server.on(f"/models/{model}/pipeline/feature-extraction", api.hf_embed)
    for model in ("org/cls-backup", "org/limited-cls"):
        server.on(f"/models/{model}", api.hf_classify)
    yield server  # org/down-a, org/down-b and org/cls-404 answer 404: no handler
    server.stop()


@pytest.fixture(scope="module")
def env(server: InferenceServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    config = tmp_path_factory.mktemp("features") / "catalogue.toml"
    text = CATALOGUE.format(limit=LIMIT_PER_MINUTE)
    for model in (
        "always-500",
        "second-gen",
        "down-a",
        "down-b",
        "cls-404",
        "cls-backup",
        "balanced-embed",
        "limited-cls",
    ):
        text += f'[models."org/{model}"]\nprovider = "hf-inference"\n'
    config.write_text(text)
    empty_redis_db(BROKER)
    return {
        "LLM_ROUTER_BROKER_URL": BROKER,
        "LLM_ROUTER_CONFIG": str(config),
        "LLM_ROUTER_RETRY_DELAY_SCALE": str(SCALE),
        "HUGGINGFACE_BASE_URL": server.url,
    }


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., WorkerProcess], env: dict[str, str]) -> list[WorkerProcess]:
    return [start_worker("fast,balanced,quality", f"features-{i}", env=env) for i in range(2)]


@pytest.fixture(scope="module")
def router(cluster_settings: Settings, env: dict[str, str]) -> Iterator[Router]:
    settings = cluster_settings.model_copy(update={"broker_url": BROKER, "config": Path(env["LLM_ROUTER_CONFIG"])})
    with Router(settings) as router:
        yield router


def _path(router: Router, job_id: str) -> list[tuple[str | None, str | None, str]]:
    return [(a.model, a.tier, a.status) for a in router.get(job_id).attempts()]


def test_a_chain_whose_first_model_always_fails_answers_from_the_second(
    workers: list[WorkerProcess], router: Router, server: InferenceServer
) -> None:
    job = router.generate("first fails", tier="fast")
    result = job.wait(timeout=60)
    assert isinstance(result, GenerateResult) and result.model == "org/second-gen" and result.tier == "fast"
    path = _path(router, job.id)
    assert path[-1] == ("org/second-gen", "fast", "succeeded")
    assert [step[0] for step in path[:-1]] == ["org/always-500"] * 4  # 1 call + 3 retries, then the next model
    assert len(server.calls_to("/models/org/always-500")) == 4


def test_a_tier_whose_models_all_fail_escalates_to_the_next_tier(workers: list[WorkerProcess], router: Router) -> None:
    job = router.embed("every fast model is gone", tier="fast")
    result = job.wait(timeout=60)
    assert isinstance(result, EmbedResult) and result.model == "org/balanced-embed" and result.tier == "balanced"
    assert _path(router, job.id) == [
        ("org/down-a", "fast", "failed"),
        ("org/down-b", "fast", "failed"),
        ("org/balanced-embed", "balanced", "succeeded"),
    ]
    assert job.record().tier == "balanced"


def test_fallback_none_fails_after_one_model(
    workers: list[WorkerProcess], router: Router, server: InferenceServer
) -> None:
    job = router.classify("no fallback please", tier="fast", fallback="none")
    with pytest.raises(JobFailed, match="ModelNotFound"):
        job.wait(timeout=60)
    assert _path(router, job.id) == [("org/cls-404", "fast", "failed")]
    assert server.calls_to("/models/org/cls-backup") == []


def test_a_model_that_answered_404_is_passed_over_by_later_jobs(
    workers: list[WorkerProcess], router: Router, server: InferenceServer
) -> None:
    calls_before = len(server.calls_to("/models/org/cls-404"))
    job = router.classify("the 404 model is cooling down", tier="fast")
    result = job.wait(timeout=60)
    assert isinstance(result, ClassifyResult) and result.model == "org/cls-backup"
    assert _path(router, job.id) == [("org/cls-404", "fast", "skipped"), ("org/cls-backup", "fast", "succeeded")]
    assert len(server.calls_to("/models/org/cls-404")) == calls_before  # no call burnt on it


def test_identical_requests_are_answered_from_the_cache(
    workers: list[WorkerProcess], router: Router, server: InferenceServer
) -> None:
    path = "/models/org/balanced-embed/pipeline/feature-extraction"
    first = router.embed(["cache me", "and me"], tier="balanced")
    original = first.wait(timeout=30)
    calls = len(server.calls_to(path))

    second = router.embed(["cache me", "and me"], tier="balanced")
    assert second.status() == "succeeded"  # answered at submit time: no message, no model call
    cached = second.wait(timeout=1)
    assert isinstance(cached, EmbedResult) and cached.cached and cached.data == original.data
    assert second.record().cached and len(server.calls_to(path)) == calls

    # A message that reaches a worker (a hand-written producer here) is answered from the cache there too.
    job_id = str(uuid.uuid4())
    router.app.send_task(
        "llm_router.embed",
        kwargs={"job_id": job_id, "request": {"input": ["cache me", "and me"], "tier": "balanced"}},
        queue="balanced",
    )
    from_worker = router.get_when_recorded(job_id, timeout=30).wait(timeout=30)
    assert isinstance(from_worker, EmbedResult) and from_worker.cached and len(server.calls_to(path)) == calls

    bypass = router.embed(["cache me", "and me"], tier="balanced", use_cache=False).wait(timeout=30)
    assert isinstance(bypass, EmbedResult) and not bypass.cached and len(server.calls_to(path)) == calls + 1


def test_usage_report_shows_hits_fallbacks_and_failures(
    workers: list[WorkerProcess], router: Router, env: dict[str, str], cluster_env: dict[str, str]
) -> None:
    outcome = CliRunner().invoke(cli, ["usage", "--json"], env={**cluster_env, **env})
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.output)
    assert report["cache_hits"] >= 2 and report["cache_hit_rate"] > 0
    assert report["model_fallbacks"] >= 1 and report["tier_fallbacks"] >= 1 and report["retries"] >= 3
    assert report["failures_by_cause"].get("ModelNotFound", 0) >= 1
    by_model = {(m["tier"], m["model"]): m for m in report["models"]}
    assert by_model[("fast", "org/second-gen")]["p95_ms"] > 0
    text = CliRunner().invoke(cli, ["usage", "--since", "1h"], env={**cluster_env, **env})
    assert text.exit_code == 0 and "hit rate" in text.output


def test_rate_limit_holds_across_two_workers_without_blocking_other_queues(
    workers: list[WorkerProcess], router: Router, server: InferenceServer
) -> None:
    path = "/models/org/limited-cls"
    # One job over the limit: it comes back when the first slot frees (more would come back a pace apart, the
    # window's period over its limit: tests/integration/test_rate_limiter.py).
    over = LIMIT_PER_MINUTE + 1
    limited = [router.classify(f"limited job {i}, I love it", tier="quality") for i in range(over)]
    time.sleep(1.0)
    other = [router.embed(f"another queue {i}", tier="balanced") for i in range(3)]
    for job in other:
        job.wait(timeout=30)
    others_done = max(job.record().finished_at for job in other)  # type: ignore[type-var]
    assert len(server.calls_to(path)) == LIMIT_PER_MINUTE  # the job over it waits, outside any worker slot

    for job in limited:
        assert isinstance(job.wait(timeout=150), ClassifyResult)
    times = sorted(call.at for call in server.calls_to(path))
    assert len(times) == over
    for earlier, later in zip(times, times[LIMIT_PER_MINUTE:], strict=False):
        assert later - earlier >= 60.0, "more than the limit inside one 60 s window"
    first_waiting_start = sorted(job.attempts()[0].started_at for job in limited)[LIMIT_PER_MINUTE]
    assert others_done < first_waiting_start
