"""The gpu pool's model path on a GPU: the local backend's embeddings on cuda in fp16, against the model alone on
the same GPU, and against the CPU's fp32 answer.

    python ops/bench/gpu.py --models DIR [--n 20000] [--reference REF.json] [--json OUT.json]
    python ops/bench/gpu.py --models DIR --write-reference REF.json      # on a CPU: the fp32 answers

DIR holds ``sentence-transformers/all-MiniLM-L6-v2`` as ``llm-router models prepare`` leaves it. On the device
it resolves the way a ``--pool gpu`` worker does (``auto``: cuda, fp16) and measures, in one run:

(a) the model alone: ``AutoModel`` in fp16 on the GPU, batches of 64 sorted by length, mean pooling;
(b) ``LocalBackend.embed_many`` with 64 one-sentence requests per call, as the jobs of a bulk message go;
(c) the largest distance (1 - cosine) between (b)'s vectors and the CPU's fp32 ones, with ``--reference``.

It prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llm_router.broker.catalogue import parse_catalogue  # noqa: E402
from llm_router.tasks.schemas import EmbedRequest  # noqa: E402
from llm_router.workers.backends.local import LocalBackend  # noqa: E402
from llm_router.workers.device import resolve_device  # noqa: E402
from llm_router.workers.registry import ModelRegistry  # noqa: E402
from ops.bench.quantization import sentences  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CATALOGUE = f"""
default_tier = "quality"
tier_order = ["quality"]
[tiers.quality]
pool = "gpu"
embed = ["{MODEL}"]
"""


def backend_vectors(backend: LocalBackend, texts: list[str]) -> tuple[list[list[float]], float]:
    started = time.perf_counter()
    vectors: list[list[float]] = []
    for start in range(0, len(texts), 64):
        requests = [EmbedRequest(input=text) for text in texts[start : start + 64]]
        vectors += [result.data[0].embedding for result in backend.embed_many(MODEL, requests)]
    sync()
    return vectors, time.perf_counter() - started


def model_alone(registry: ModelRegistry, texts: list[str]) -> float:
    import torch

    loaded = registry.get(MODEL, "embed")
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            batch = loaded.tokenizer(
                [texts[i] for i in order[start : start + 64]], padding=True, truncation=True, return_tensors="pt"
            ).to(loaded.device)
            hidden = loaded.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu()
    sync()
    return time.perf_counter() - started


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def largest_distance(ours: list[list[float]], reference: list[list[float]]) -> float:
    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / (
            sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5
        )

    return max(1.0 - cosine(a, b) for a, b in zip(ours, reference, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--reference", type=Path, help="the CPU's fp32 vectors of the first 256 sentences")
    parser.add_argument("--write-reference", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    catalogue = parse_catalogue(CATALOGUE, "gpu check")
    device = resolve_device("auto")
    registry = ModelRegistry(catalogue, args.models, device)
    backend = LocalBackend(registry)
    texts = sentences(args.n)
    if args.write_reference:
        vectors, _ = backend_vectors(backend, texts[:256])
        args.write_reference.write_text(json.dumps(vectors))
        print(f"wrote the {device} reference of 256 sentences to {args.write_reference}")
        return
    loaded = registry.get(MODEL, "embed")
    backend_vectors(backend, texts[:256])  # warm-up
    model_alone(registry, texts[:256])
    alone_s = model_alone(registry, texts)
    _, backend_s = backend_vectors(backend, texts)
    alone_again_s = model_alone(registry, texts)
    reference_s = (alone_s + alone_again_s) / 2
    results: dict[str, Any] = {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "dtype": str(next(loaded.model.parameters()).dtype),
        "n": args.n,
        "model_alone_per_s": args.n / reference_s,
        "backend_per_s": args.n / backend_s,
    }
    results["backend_ratio"] = results["backend_per_s"] / results["model_alone_per_s"]
    if args.reference:
        vectors, _ = backend_vectors(backend, texts[:256])
        results["largest_distance_to_cpu_fp32"] = largest_distance(vectors, json.loads(args.reference.read_text()))
    print(f"device {results['device']} ({results['gpu']}), weights {results['dtype']}, N = {args.n}")
    print(f"(a) model alone, fp16, batches of 64   {results['model_alone_per_s']:>10.0f} sentences/s  reference")
    print(
        f"(b) LocalBackend.embed_many, 64 jobs   {results['backend_per_s']:>10.0f} sentences/s  "
        f"b/a = {results['backend_ratio']:.2f}"
    )
    if "largest_distance_to_cpu_fp32" in results:
        print(f"(c) largest 1 - cosine to CPU fp32     {results['largest_distance_to_cpu_fp32']:>10.2e}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
