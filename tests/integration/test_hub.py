"""The guide's Hub tools — search, info, download — against a real HTTP server that answers as the Hub does
(``HF_ENDPOINT``), through ``huggingface_hub`` and real sockets; a downloaded model then served offline by a
real worker."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants

from llm_router.broker.catalogue import load_catalogue
from llm_router.broker.client import Router
from llm_router.broker.hub import Hub, SearchQuery
from llm_router.broker.settings import Settings
from llm_router.tasks.errors import HubUnavailable, InvalidRequest, ModelGated, ModelNotFound
from llm_router.tasks.schemas import EmbedRequest
from llm_router.workers.backends.local import LocalBackend
from llm_router.workers.registry import ModelRegistry
from tests.conftest import REPO, WorkerProcess
from tests.support.hub_server import HubModel, HubServer

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
COPY = "acme/minilm-copy"  # the bundled MiniLM's files, served by the stand-in Hub under another name
CHAT = HubModel(
    "acme/chat-7b",
    {
        "pipeline_tag": "text-generation",
        "library_name": "transformers",
        "downloads": 9000,
        "likes": 120,
        "tags": ["en", "conversational", "license:apache-2.0"],
        "safetensors": {"parameters": {"BF16": 7_000, "F32": 250}, "total": 7_250},
        "inferenceProviderMapping": {
            "hf-inference": {"providerId": "acme/chat-7b", "status": "live", "task": "conversational"},
            "together": {"providerId": "acme-chat", "status": "staging", "task": "conversational"},
        },
        "cardData": {"license": "apache-2.0"},
    },
)
SMALL = HubModel(
    "acme/chat-small",
    {"pipeline_tag": "text-generation", "downloads": 50_000, "likes": 3, "tags": ["en", "conversational"]},
)
FRENCH = HubModel("other/bavard", {"pipeline_tag": "text-generation", "downloads": 70, "tags": ["fr"]})
GATED = HubModel("acme/gated-model", {"pipeline_tag": "text-generation", "tags": []}, {"config.json": b"{}"}, "manual")


@pytest.fixture(scope="module", autouse=True)
def hub_online() -> Iterator[None]:
    """The test session runs with HF_HUB_OFFLINE=1 (no model may be fetched by accident); the Hub calls made
    in this process go to the stand-in, so huggingface_hub's own switch is turned off while they run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield


@pytest.fixture(scope="module")
def hub(models_dir: Path) -> Iterator[HubServer]:
    copy = HubModel.from_folder(COPY, models_dir / MINILM, pipeline_tag="feature-extraction", tags=["en"])
    server = HubServer([CHAT, SMALL, FRENCH, GATED, copy]).start()
    yield server
    server.stop()


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def cli(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "llm_router.cli.main", "models", *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.fixture
def hub_env(cluster_env: dict[str, str], hub: HubServer, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in cluster_env.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGINGFACE_API_KEY")}
    return {**env, "HF_ENDPOINT": hub.url, "HUGGINGFACE_CACHE_DIR": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "0"}


def test_search_sends_each_guide_option_as_the_hub_api_names_it(hub: HubServer, hub_env: dict[str, str]) -> None:
    before = len(hub.requests_to("/api/models"))
    arguments = ["--task", "text-generation", "--language", "en", "--tag", "conversational", "--author", "acme"]
    done = cli(hub_env, "search", *arguments, "--sort", "downloads", "--limit", "10", "--provider", "all", "--json")
    assert done.returncode == 0, done.stderr
    query = hub.requests_to("/api/models")[before:][0].query
    assert query["pipeline_tag"] == ["text-generation"]
    assert query["filter"] == ["en", "conversational"]  # language and tags both become filters
    assert query["author"] == ["acme"]
    assert query["sort"] == ["downloads"]
    assert query["limit"] == ["10"]
    assert query["inference_provider"] == ["all"]
    assert {"pipeline_tag", "downloads", "likes", "inferenceProviderMapping"} <= set(query["expand"])
    rows = json.loads(done.stdout)
    assert [row["id"] for row in rows] == ["acme/chat-small", "acme/chat-7b"]  # most downloaded first
    assert rows[1]["providers"] == ["hf-inference", "together"]


@pytest.mark.parametrize(
    ("sort", "sent"),
    [
        ("downloads", "downloads"),
        ("likes", "likes"),
        ("trending", "trendingScore"),  # the guide's word → the Hub's key
        ("created", "createdAt"),
        ("modified", "lastModified"),
    ],
)
def test_each_sort_reaches_the_hub_under_its_own_key(hub: HubServer, sort: str, sent: str) -> None:
    before = len(hub.requests_to("/api/models"))
    Hub(hub.url, None).search(SearchQuery(sort=sort, limit=3))  # type: ignore[arg-type]
    assert hub.requests_to("/api/models")[before:][0].query["sort"] == [sent]


def test_search_prints_a_readable_table(hub_env: dict[str, str]) -> None:
    done = cli(hub_env, "search", "--language", "fr")
    assert done.returncode == 0, done.stderr
    header, rule, *rows = done.stdout.splitlines()
    assert header.split() == ["model", "task", "library", "downloads", "likes", "providers"]
    assert set(rule) == {"-", " "}
    assert len(rows) == 1 and rows[0].startswith("other/bavard") and "70" in rows[0]


def test_info_reports_the_guide_fields_and_the_tiers_that_run_the_model(hub: HubServer, tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(
        f'tier_order = ["fast", "remote"]\n[tiers.fast]\ngenerate = ["{CHAT.id}"]\n'
        f'[tiers.remote]\npool = "remote"\ngenerate = ["{CHAT.id}"]\n'
        f'[models."{CHAT.id}"]\nprovider = "hf-inference"\n'
    )
    router = Router(Settings(var_dir=tmp_path, config=catalogue, hf_endpoint=hub.url, hf_hub_offline=False))
    details = router.model_info(CHAT.id)
    router.close()
    assert (details.task, details.library, details.downloads, details.likes) == (
        "text-generation",
        "transformers",
        9000,
        120,
    )
    assert details.parameters == 7_250
    assert details.weights_bytes == 7_000 * 2 + 250 * 4  # BF16 weights take 2 bytes, F32 4
    assert details.licence == "apache-2.0"
    assert details.gated is False
    assert [(p.provider, p.status, p.task) for p in details.providers] == [
        ("hf-inference", "live", "conversational"),
        ("together", "staging", "conversational"),
    ]
    assert details.tiers == ["fast", "remote"]


def test_info_of_a_missing_model_or_revision_is_one_clear_line(hub_env: dict[str, str]) -> None:
    missing = cli(hub_env, "info", "acme/no-such-model")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"error: model 'acme/no-such-model' was not found on {hub_env['HF_ENDPOINT']} (or it is private to another "
        "account)"
    ]
    revision = cli(hub_env, "info", CHAT.id, "--revision", "v9", "--json")
    assert revision.returncode == 1
    assert "no such revision" in json.loads(revision.stdout)["error"]


def test_a_gated_model_is_described_but_its_download_says_why_it_is_refused(
    hub: HubServer, tmp_path: Path, hub_env: dict[str, str]
) -> None:
    assert Hub(hub.url, None).info(GATED.id).gated == "manual"
    with pytest.raises(ModelGated, match="is gated: request access"):
        Hub(hub.url, None, cache_dir=tmp_path).download(GATED.id, progress=False)
    done = cli(hub_env, "download", GATED.id)
    assert done.returncode == 1
    assert "gated" in done.stderr and "HF_TOKEN" in done.stderr
    assert not any((tmp_path / "hf-cache").rglob("config.json"))


def test_offline_mode_asks_nothing_and_says_so(hub: HubServer, hub_env: dict[str, str]) -> None:
    before = len(hub.requests)
    for arguments in (["search", "--task", "text-generation"], ["info", CHAT.id], ["download", CHAT.id]):
        done = cli({**hub_env, "HF_HUB_OFFLINE": "1"}, *arguments)
        assert done.returncode == 3, arguments
        assert done.stderr.strip().splitlines() == [
            "error: the Hub is not asked: offline mode is on (HF_HUB_OFFLINE=1); unset it to ask the Hub"
        ]
    assert len(hub.requests) == before


def test_a_hub_that_does_not_answer_is_named(hub_env: dict[str, str]) -> None:
    endpoint = closed_port()
    for arguments in (["search"], ["info", CHAT.id], ["download", COPY]):
        done = cli({**hub_env, "HF_ENDPOINT": endpoint}, *arguments)
        assert done.returncode == 3, (arguments, done.stderr)
        assert f"the Hub at {endpoint} cannot be reached" in done.stderr
        assert "Retrying" not in done.stderr  # one line, no storm of the client's retries


@pytest.mark.parametrize(
    ("query", "named"),
    [
        (lambda: SearchQuery(task="text generation"), "task"),  # a space is not in a pipeline tag
        (lambda: SearchQuery(limit=0), "limit"),
        (lambda: SearchQuery(limit=1001), "limit"),
        (lambda: SearchQuery(sort="popular"), "sort"),  # type: ignore[arg-type]
        (lambda: SearchQuery(tags=("ok", "no/slash")), "tags"),
    ],
)
def test_a_bad_search_option_is_refused_before_the_hub_is_asked(query: Callable[[], SearchQuery], named: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        query()
    assert refused.value.field == named and str(refused.value).startswith(f"{named}: ")


def test_bad_options_on_the_command_line_exit_2(hub: HubServer, hub_env: dict[str, str]) -> None:
    before = len(hub.requests)
    assert cli(hub_env, "search", "--task", "bad task").returncode == 2
    assert cli(hub_env, "search", "--limit", "0").returncode == 2
    assert cli(hub_env, "info", "not a model id").returncode == 2
    assert len(hub.requests) == before


def test_router_search_and_errors_use_the_same_hub(hub: HubServer, tmp_path: Path) -> None:
    with Router(Settings(var_dir=tmp_path, hf_endpoint=hub.url, hf_hub_offline=False)) as router:
        assert [m.id for m in router.search_models("text-generation", author="other")] == ["other/bavard"]
        with pytest.raises(ModelNotFound):
            router.model_info("acme/nothing")
    with (
        Router(Settings(var_dir=tmp_path, hf_endpoint=hub.url, hf_hub_offline=True)) as router,
        pytest.raises(HubUnavailable),
    ):
        router.search_models()


def test_a_downloaded_model_is_served_offline_by_a_local_tier(
    hub: HubServer,
    hub_env: dict[str, str],
    cluster_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    models_dir: Path,
    tmp_path: Path,
) -> None:
    done = cli(hub_env, "download", COPY, "--json")
    assert done.returncode == 0, done.stderr
    folder = Path(json.loads(done.stdout)["folder"])
    assert folder.is_relative_to(Path(hub_env["HUGGINGFACE_CACHE_DIR"]))
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert (folder / "model.safetensors").read_bytes() == (models_dir / MINILM / "model.safetensors").read_bytes()

    # A worker with no network at all (offline, and a Hub that is gone) serves it from the cache.
    config = tmp_path / "catalogue.toml"
    config.write_text(
        f'default_tier = "hub"\ntier_order = ["hub"]\n[tiers.hub]\nembed = ["{COPY}"]\n'
        f'[models."{COPY}"]\nprovider = "local"\n'
    )
    offline = {
        "LLM_ROUTER_CONFIG": str(config),
        "HUGGINGFACE_CACHE_DIR": hub_env["HUGGINGFACE_CACHE_DIR"],
        "HF_ENDPOINT": closed_port(),
        "HF_HUB_OFFLINE": "1",
    }
    start_worker("hub", "hub", env=offline)
    with Router(cluster_settings.model_copy(update={"config": config})) as router:
        vector = router.embed("a model fetched from the Hub", tier="hub").wait(60).data[0].embedding  # type: ignore[union-attr]
    backend = LocalBackend(ModelRegistry(load_catalogue(None), models_dir, "cpu"))
    reference = backend.embed(MINILM, EmbedRequest(input=["a model fetched from the Hub"])).data[0].embedding
    assert np.allclose(vector, reference, atol=1e-6)  # the same weights, loaded from the Hub's cache
