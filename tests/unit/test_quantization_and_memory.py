"""The CPU pool's plan (threads, lanes, batching windows), its 8-bit dynamic quantisation on the real models, and the
registry's memory cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_router.broker.catalogue import load_catalogue
from llm_router.tasks.errors import ConfigurationError
from llm_router.tasks.schemas import ClassifyRequest, EmbedRequest
from llm_router.workers.backends.local import LocalBackend
from llm_router.workers.bundled.prepare import MINILM_ID, SENTIMENT_ID
from llm_router.workers.groups import MAX_GENERATIONS_TOGETHER, inputs_per_call
from llm_router.workers.pools import parse_size, plan_pool
from llm_router.workers.registry import ModelRegistry
from llm_router.workers.runtime import WorkerProfile

CATALOGUE = load_catalogue(None)
SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar.",
    "The stock market crashed today.",
    "How do I reset my password?",
    "I forgot my password, how can I change it?",
    "The weather is lovely.",
    "Queues decouple producers from consumers.",
    "She sells sea shells by the sea shore.",
]
LABELLED = [
    ("I love this!", "POSITIVE"),
    ("This is terrible.", "NEGATIVE"),
    ("Best purchase I made this year.", "POSITIVE"),
    ("The worst film I have seen in a decade.", "NEGATIVE"),
    ("What a beautiful and kind gesture.", "POSITIVE"),
    ("This update ruined my phone.", "NEGATIVE"),
]


@pytest.fixture(scope="module")
def registries(models_dir: Path) -> tuple[ModelRegistry, ModelRegistry]:
    return ModelRegistry(CATALOGUE, models_dir, "cpu"), ModelRegistry(CATALOGUE, models_dir, "cpu", quantize="8bit")


def test_8bit_embeddings_stay_close_to_fp32(registries: tuple[ModelRegistry, ModelRegistry]) -> None:
    full, small = (LocalBackend(r).embed(MINILM_ID, EmbedRequest(input=SENTENCES)) for r in registries)
    for a, b in zip(full.data, small.data, strict=True):
        cosine = sum(x * y for x, y in zip(a.embedding, b.embedding, strict=True))  # both are unit vectors
        assert cosine >= 0.98
    assert registries[1].get(MINILM_ID, "embed").quantized
    assert registries[1].get(MINILM_ID, "embed").size_bytes < 0.85 * registries[0].get(MINILM_ID, "embed").size_bytes


def test_8bit_classifier_gives_the_same_labels(registries: tuple[ModelRegistry, ModelRegistry]) -> None:
    request = ClassifyRequest(input=[text for text, _ in LABELLED])
    full, small = (LocalBackend(r).classify(SENTIMENT_ID, request) for r in registries)
    assert [d.labels[0].label for d in small.data] == [d.labels[0].label for d in full.data]
    assert [d.labels[0].label for d in small.data] == [label for _, label in LABELLED]


def test_memory_cap_unloads_the_least_recently_used_model(models_dir: Path) -> None:
    probe = ModelRegistry(CATALOGUE, models_dir, "cpu")
    one_model = probe.get(MINILM_ID, "embed").size_bytes
    capped = ModelRegistry(CATALOGUE, models_dir, "cpu", max_memory_bytes=int(one_model * 1.5))
    capped.get(MINILM_ID, "embed")
    capped.get(SENTIMENT_ID, "classify")  # both ~90 MB: the first must go
    assert [m.model_id for m in capped.loaded()] == [SENTIMENT_ID]
    capped.get(MINILM_ID, "embed")  # comes back on demand, and the other one leaves
    assert [m.model_id for m in capped.loaded()] == [MINILM_ID]


@pytest.mark.parametrize(
    ("text", "size"),
    [("8GB", 8 * 10**9), ("512MiB", 512 * 2**20), ("1.5GB", 1_500_000_000), ("1000", 1000), ("2 gib", 2 * 2**30)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_bad_sizes_and_pool_options_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="--max-memory"):
        parse_size("lots")
    with pytest.raises(ConfigurationError, match="--concurrency"):
        plan_pool("gpu", CATALOGUE, device="cpu", concurrency=2)
    with pytest.raises(ConfigurationError, match="--queues: unknown"):
        plan_pool("cpu", CATALOGUE, queues=["turbo"])
    with pytest.raises(ConfigurationError, match="--bulk-window: must be between 1 and 16384, got 0"):
        plan_pool("cpu", CATALOGUE, bulk_window=0)


def test_a_bulk_call_takes_a_window_wider_than_an_interactive_call() -> None:
    shared, bulk = plan_pool("cpu", CATALOGUE).profile, plan_pool("cpu", CATALOGUE, lanes="bulk").profile
    assert (shared.bulk_window, bulk.bulk_window) == (1024, 1024)
    assert (inputs_per_call(shared, "embed", "bulk"), inputs_per_call(bulk, "classify", "bulk")) == (1024, 1024)
    # an interactive call stays at max_batch; generations share a call eight at most
    assert inputs_per_call(shared, "embed", "interactive") == 64
    assert inputs_per_call(bulk, "generate", "bulk") == MAX_GENERATIONS_TOGETHER == 8
    # a window narrower than a pass is a pass; the remote pool's calls are HTTP calls of max_batch inputs
    narrow = plan_pool("cpu", CATALOGUE, bulk_window=16, max_batch=64).profile
    assert inputs_per_call(narrow, "embed", "bulk") == 64
    remote = WorkerProfile("remote", max_batch=32, bulk_window=1024)
    assert inputs_per_call(remote, "embed", "bulk") == 32


def test_cpu_pool_divides_torch_threads_between_processes() -> None:
    plan = plan_pool("cpu", CATALOGUE, concurrency=2, cores=8, quantize="8bit")
    assert (plan.execution_pool, plan.concurrency, plan.profile.torch_threads) == ("prefork", 2, 4)
    assert plan.queues == ["fast", "balanced", "fast.bulk", "balanced.bulk"] and plan.profile.quantize == "8bit"


def test_gpu_pool_needs_cuda_unless_told_cpu() -> None:
    import torch

    if torch.cuda.is_available():  # on a GPU machine the pool takes it
        assert plan_pool("gpu", CATALOGUE).profile.device == "cuda"
    else:
        with pytest.raises(ConfigurationError, match="no GPU"):
            plan_pool("gpu", CATALOGUE)
    plan = plan_pool("gpu", CATALOGUE, device="cpu")
    assert (plan.execution_pool, plan.concurrency, plan.queues) == ("solo", 1, ["quality", "quality.bulk"])
