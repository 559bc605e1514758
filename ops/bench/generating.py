"""Part (h) of ``run.py``: SmolLM2's tokens per second through the cluster, one job at a time and 8 at once,
against ``model.generate`` in this process, the two sides measured in turns."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_router.broker.catalogue import load_catalogue
from llm_router.broker.client import Router
from llm_router.broker.settings import Settings
from llm_router.workers.registry import ModelRegistry
from ops.bench.cluster import Cluster

GENERATE_PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works to a ten-year-old.",
    "Describe a walk through a busy market in the morning.",
    "Give advice to someone starting their first job as a programmer.",
    "Write a letter from a cat to its owner about the new dog.",
    "Describe the life cycle of a star in simple words.",
    "Tell the story of a train journey across the mountains.",
    "Explain why the sky changes colour at sunset.",
]
GENERATE_TOKENS = 64


def _count_new_tokens(row: list[int], ends: set[int]) -> int:
    return next((i + 1 for i, token in enumerate(row) if token in ends), len(row))


class GenerationAlone:
    """SmolLM2 through ``model.generate`` in this process, loaded as a worker loads it (same dtype, prompt
    template and parameters): one prompt on its own, or several in one left-padded call."""

    def __init__(self, settings: Settings, catalogue_path: Path):

        catalogue = load_catalogue(catalogue_path)
        model_id = catalogue.tiers["fast"].generate[0]
        self.defaults = catalogue.defaults
        loaded = ModelRegistry(catalogue, settings.models_dir, "cpu", settings.hf_cache_dir).get(model_id, "generate")
        self.tokenizer, self.model = loaded.tokenizer, loaded.model
        self.pad = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        )
        self.tokenizer.padding_side = "left"

    def run(self, prompts: list[str], greedy: bool) -> int:
        """New tokens made for ``prompts``: greedy (as a job of temperature 0 runs) or sampled at the
        catalogue's defaults (as a job with no parameters runs)."""
        import torch

        defaults, tokenizer = self.defaults, self.tokenizer
        parameters: dict[str, Any] = {"do_sample": False, "repetition_penalty": defaults.repetition_penalty}
        if not greedy:
            parameters.update(
                do_sample=True, temperature=defaults.temperature, top_p=defaults.top_p, top_k=defaults.top_k
            )
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            output = self.model.generate(**batch, **parameters, max_new_tokens=GENERATE_TOKENS, pad_token_id=self.pad)
        width = batch["input_ids"].shape[1]
        ends = {tokenizer.eos_token_id, self.pad}
        return sum(_count_new_tokens(row[width:].tolist(), ends) for row in output)


def generation(
    router: Router,
    cluster: Cluster,
    settings: Settings,
    catalogue_path: Path,
    one_worker: list[str],
    batched_worker: list[str],
    rounds: int = 2,
) -> dict[str, Any]:
    """Tokens per second through the cluster against ``model.generate`` in this process, measured in turns
    (the machine's speed drifts over minutes; turns put both sides under the same drift):

    - one job at a time, each waited for, on a worker at its defaults, greedy: the job and the model alone make
      the same tokens, so both sides do the same work; turns of one prompt each;
    - the 8 prompts submitted at once to a worker that waits up to 200 ms to batch them, sampled at the
      catalogue's defaults (greedy jobs never share a call), against the 8 prompts in one ``generate``; turns
      of the 8 prompts."""
    alone = GenerationAlone(settings, catalogue_path)

    def submit(prompt: str, greedy: bool) -> Any:
        messages = [{"role": "user", "content": prompt}]
        temperature = 0.0 if greedy else None
        return router.generate(
            messages=messages, tier="fast", max_tokens=GENERATE_TOKENS, temperature=temperature, use_cache=False
        )

    def job_tokens(prompt: str) -> int:
        return int(submit(prompt, greedy=True).wait(timeout=300).usage.completion_tokens)

    def together() -> int:
        jobs = [submit(prompt, greedy=False) for prompt in GENERATE_PROMPTS]
        return sum(job.wait(timeout=300).usage.completion_tokens for job in jobs)

    sides: dict[str, list[float]] = {name: [0.0, 0.0] for name in ("alone", "cluster", "alone_8", "cluster_8")}

    def add(side: str, figures: tuple[int, float]) -> None:
        sides[side][0] += figures[0]
        sides[side][1] += figures[1]

    cluster.start("generate", *one_worker)
    job_tokens(GENERATE_PROMPTS[0])  # warm-up, both sides
    alone.run(GENERATE_PROMPTS[:1], greedy=True)
    for _ in range(rounds):
        for prompt in GENERATE_PROMPTS:
            add("alone", timed(lambda prompt=prompt: alone.run([prompt], greedy=True)))
            add("cluster", timed(lambda prompt=prompt: job_tokens(prompt)))
    cluster.stop()
    cluster.start("generate_batched", *batched_worker)
    together()  # warm-up
    for _ in range(rounds):
        add("alone_8", timed(lambda: alone.run(GENERATE_PROMPTS, greedy=False)))
        add("cluster_8", timed(together))
    cluster.stop()
    return {
        "tokens_per_s": sides["alone"][0] / sides["alone"][1],
        "cluster_tokens_per_s": sides["cluster"][0] / sides["cluster"][1],
        "batched_tokens_per_s": sides["alone_8"][0] / sides["alone_8"][1],
        "cluster_batched_tokens_per_s": sides["cluster_8"][0] / sides["cluster_8"][1],
        "tokens": {side: int(figures[0]) for side, figures in sides.items()},
        "same_tokens": sides["alone"][0] == sides["cluster"][0],  # greedy: the same text on both sides
        "rounds": rounds,
    }


def timed(run: Callable[[], int]) -> tuple[int, float]:
    """What ``run`` returns (new tokens), and the seconds it took."""
    started = time.perf_counter()
    return run(), time.perf_counter() - started
