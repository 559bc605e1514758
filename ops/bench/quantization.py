"""Benchmark the CPU pool's 8-bit dynamic quantisation against fp32 on the bundled models.

    python ops/bench/quantization.py [--n 2000] [--json OUT.json]

For MiniLM embeddings and the sentiment classifier: weight memory, process RSS growth, sentences per
second at batch 64, and how close the 8-bit outputs stay (embedding cosine, label agreement).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import resource
import time
from pathlib import Path

from llm_router.broker.catalogue import load_catalogue
from llm_router.broker.settings import Settings
from llm_router.tasks.schemas import ClassifyRequest, EmbedRequest
from llm_router.workers.backends.local import LocalBackend
from llm_router.workers.bundled.prepare import MINILM_ID, SENTIMENT_ID, prepare_models
from llm_router.workers.registry import ModelRegistry

WORDS = [
    "the",
    "a",
    "queue",
    "worker",
    "model",
    "router",
    "job",
    "tier",
    "fast",
    "quality",
    "balanced",
    "message",
    "broker",
    "database",
    "result",
    "cluster",
    "request",
    "token",
    "latency",
    "retry",
    "cache",
    "limit",
    "sentence",
    "vector",
    "label",
    "happy",
    "sad",
    "great",
    "terrible",
]


def sentences(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "." for _ in range(n)]


def rss_mb() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(quantize: str, texts: list[str], models_dir: Path) -> dict[str, object]:
    registry = ModelRegistry(load_catalogue(None), models_dir, "cpu", quantize=quantize)  # type: ignore[arg-type]
    backend = LocalBackend(registry)
    import torch

    torch.set_num_threads(2)
    before = rss_mb()
    registry.get(MINILM_ID, "embed")
    registry.get(SENTIMENT_ID, "classify")
    figures: dict[str, object] = {"weights_mb": registry.loaded_bytes / 2**20, "rss_growth_mb": rss_mb() - before}
    started = time.perf_counter()
    vectors = [
        v.embedding
        for i in range(0, len(texts), 256)
        for v in backend.embed(MINILM_ID, EmbedRequest(input=texts[i : i + 256])).data
    ]
    figures["embed_per_s"] = len(texts) / (time.perf_counter() - started)
    started = time.perf_counter()
    labels = [
        d.labels[0].label
        for i in range(0, len(texts), 256)
        for d in backend.classify(SENTIMENT_ID, ClassifyRequest(input=texts[i : i + 256])).data
    ]
    figures["classify_per_s"] = len(texts) / (time.perf_counter() - started)
    figures["vectors"], figures["labels"] = vectors, labels
    return figures


def measure_apart(quantize: str, texts: list[str], models_dir: Path) -> dict[str, object]:
    """Each variant in a fresh process, so that its memory figures are its own."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(measure, (quantize, texts, models_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    models_dir = Settings().models_dir
    prepare_models(models_dir)
    texts = sentences(args.n)
    fp32, int8 = measure_apart("none", texts, models_dir), measure_apart("8bit", texts, models_dir)
    cosines = [
        sum(a * b for a, b in zip(x, y, strict=True))
        for x, y in zip(fp32.pop("vectors"), int8.pop("vectors"), strict=True)
    ]  # type: ignore[call-overload]
    agreement = sum(a == b for a, b in zip(fp32.pop("labels"), int8.pop("labels"), strict=True)) / len(texts)  # type: ignore[call-overload]
    rows = [
        ("weights (MB)", "weights_mb"),
        ("RSS growth (MB)", "rss_growth_mb"),
        ("embed sentences/s", "embed_per_s"),
        ("classify sentences/s", "classify_per_s"),
    ]
    print(f"{'measure':<24}{'fp32':>10}{'8-bit':>10}{'8-bit/fp32':>12}")
    print("-" * 56)
    for name, key in rows:
        a, b = float(fp32[key]), float(int8[key])  # type: ignore[arg-type]
        print(f"{name:<24}{a:>10.1f}{b:>10.1f}{b / a if a else float('nan'):>12.2f}")
    print(f"{'embedding cosine min/mean':<24}{min(cosines):>10.4f}{sum(cosines) / len(cosines):>10.4f}")
    print(f"{'label agreement':<24}{agreement:>10.4f}")
    if args.json:
        report = {
            "n": args.n,
            "fp32": fp32,
            "int8": int8,
            "cosine_min": min(cosines),
            "cosine_mean": sum(cosines) / len(cosines),
            "label_agreement": agreement,
        }
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
