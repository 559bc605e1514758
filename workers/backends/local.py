"""The ``local`` backend: transformers + torch in the worker process.

torch errors become ours here (``ModelFailed``); nothing above this module catches torch exceptions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy
import torch

from llm_router.broker.catalogue import GenerationDefaults
from llm_router.tasks.errors import ModelFailed
from llm_router.tasks.schemas import (
    Classification,
    ClassifyRequest,
    ClassifyResult,
    Embedding,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    LabelScore,
    Usage,
)
from llm_router.workers.cancellation import ROW_STOPS, STOP_REQUESTED
from llm_router.workers.interludes import between_passes
from llm_router.workers.model_thread import on_model_thread
from llm_router.workers.registry import LoadedModel, ModelRegistry
from llm_router.workers.streaming import DELTAS, ROW_DELTAS, RowDeltas

BATCH_SIZE = 64
T = TypeVar("T")


class _UntilCancelled:
    """A stopping criterion: a row ends at the next token once its job is asked to stop (the others go on)."""

    def __init__(self, stop_requested: list[Callable[[], bool]]):
        self._stop_requested = stop_requested

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        stops = [requested() for requested in self._stop_requested]
        return torch.tensor(stops, dtype=torch.bool, device=input_ids.device)


def _row_hooks(rows: int) -> tuple[list[Callable[[], bool]], list[Callable[[str], None] | None]]:
    """Each row's stop check and delta sink: those of the rows of a batched call, or of the one job."""
    stops, sinks = ROW_STOPS.get(), ROW_DELTAS.get()
    if stops is not None and sinks is not None and len(stops) == len(sinks) == rows:
        return stops, sinks
    stop, sink = STOP_REQUESTED.get(), DELTAS.get()
    if rows != 1:
        return [], [None] * rows
    return ([stop] if stop is not None else []), [sink]


def _run_model(model_id: str, loaded: LoadedModel, call: Callable[[], T]) -> T:
    """``call()`` on the model thread (see ``llm_router.workers.model_thread``), one at a time per model, without
    autograd; torch's errors become ``ModelFailed``."""

    def guarded() -> T:
        try:
            with torch.inference_mode(), loaded.lock:  # inference mode holds in the thread that enters it
                return call()
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ModelFailed(f"model {model_id!r} failed: {type(exc).__name__}: {str(exc)[:300]}") from exc

    return on_model_thread(guarded)


def _token_ids(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def padded_rows(tokenizer: Any, encoded: Any, indices: list[int]) -> dict[str, torch.Tensor]:
    """The rows ``indices`` of unpadded encodings, padded to the longest as the tokenizer pads them (its
    padding side, pad token and pad token type), as tensors: what ``tokenizer(texts, padding=True)`` returns
    for those texts, without tokenizing them again."""
    lengths = numpy.array([len(encoded["input_ids"][i]) for i in indices])
    columns = numpy.arange(int(lengths.max()))[None, :]
    if tokenizer.padding_side == "left":
        filled = columns >= (columns.shape[1] - lengths)[:, None]
    else:
        filled = columns < lengths[:, None]
    pads = {"input_ids": tokenizer.pad_token_id, "token_type_ids": tokenizer.pad_token_type_id}
    rows = {}
    for name, values in encoded.items():
        array = numpy.full(filled.shape, pads.get(name, 0), dtype=numpy.int64)
        # The filled cells, read row by row, are the rows' ids one after another.
        array[filled] = numpy.concatenate([values[i] for i in indices])
        rows[name] = torch.from_numpy(array)
    return rows


def length_sorted_batches(token_counts: list[int], size: int) -> Iterator[list[int]]:
    """Indices in batches of similar token count, so padding wastes little of each forward pass. Counted in
    tokens, not characters: sorted by characters, the benchmark's sentences padded 23 % more tokens in calls
    of 256 inputs (a word's characters say little about its word pieces)."""
    order = sorted(range(len(token_counts)), key=token_counts.__getitem__)
    for start in range(0, len(order), size):
        yield order[start : start + size]


class LocalBackend:
    provider = "local"

    def __init__(self, registry: ModelRegistry, batch_size: int = BATCH_SIZE):
        self._registry = registry
        self._batch_size = batch_size

    # ---- generation --------------------------------------------------------------------------------------

    def generate(self, model_id: str, request: GenerateRequest, defaults: GenerationDefaults) -> GenerateResult:
        return self.generate_many(model_id, [request], defaults)[0]

    def generate_many(
        self, model_id: str, requests: list[GenerateRequest], defaults: GenerationDefaults
    ) -> list[GenerateResult]:
        """Prompts that share their generation parameters (the first request's apply to all) in one
        ``generate`` call, left-padded so that every prompt ends where its continuation starts."""
        loaded = self._registry.get(model_id, "generate")
        tokenizer = loaded.tokenizer
        first = requests[0]
        max_new_tokens = first.max_tokens or defaults.max_tokens
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        def run() -> tuple[torch.Tensor, list[torch.Tensor], int]:
            prompts = [self._encode_prompt(loaded, request, max_new_tokens)[0] for request in requests]
            width = max(len(ids) for ids in prompts)
            input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=loaded.device)
            attention_mask = torch.zeros_like(input_ids)
            for row, ids in enumerate(prompts):
                input_ids[row, width - len(ids) :] = ids
                attention_mask[row, width - len(ids) :] = 1
            if first.seed is not None:
                torch.manual_seed(first.seed)
            # Each job's caller may cancel it, and may read its text as it is made.
            stops, sinks = _row_hooks(len(requests))
            stopping = [_UntilCancelled(stops)] if stops else None
            streamer = RowDeltas(tokenizer, sinks) if any(sinks) else None
            output = loaded.model.generate(
                stopping_criteria=stopping,
                streamer=streamer,
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                stop_strings=first.stop,
                tokenizer=tokenizer if first.stop else None,
                **self._sampling(first, defaults),
            )
            return output, prompts, width

        output, prompts, width = _run_model(model_id, loaded, run)
        limits = (max_new_tokens, set(_token_ids(loaded.model.generation_config.eos_token_id)) | {pad_id})
        return [
            self._generated(model_id, tokenizer, request, output[row, width:].tolist(), len(prompts[row]), limits)
            for row, request in enumerate(requests)
        ]

    @staticmethod
    def _generated(
        model_id: str,
        tokenizer: Any,
        request: GenerateRequest,
        generated: list[int],
        prompt_tokens: int,
        limits: tuple[int, set[int]],
    ) -> GenerateResult:
        max_new_tokens, ends = limits
        # A row that ended before the others was padded: its completion ends at its first end token.
        cut_at = next((i + 1 for i, token in enumerate(generated) if token in ends), len(generated))
        new_tokens = generated[:cut_at]
        ended = bool(new_tokens) and new_tokens[-1] in ends
        finish_reason: Any = "length" if len(new_tokens) >= max_new_tokens and not ended else "stop"
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        for stop in request.stop or []:
            cut = text.find(stop)
            if cut >= 0:
                text, finish_reason = text[:cut], "stop"
        return GenerateResult(
            text=text,
            model=model_id,
            finish_reason=finish_reason,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=len(new_tokens),
                total_tokens=prompt_tokens + len(new_tokens),
            ),
        )

    @staticmethod
    def _encode_prompt(loaded: LoadedModel, request: GenerateRequest, max_new_tokens: int) -> torch.Tensor:
        tokenizer = loaded.tokenizer
        if request.messages is not None:
            messages = [message.model_dump() for message in request.messages]
            if getattr(tokenizer, "chat_template", None):
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            else:
                text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            ids = tokenizer(request.prompt, return_tensors="pt").input_ids
        # Keep the end of an over-long prompt: that is where the model continues from.
        room = max(1, loaded.max_length - max_new_tokens)
        return ids[:, -room:].to(loaded.device)

    @staticmethod
    def _sampling(request: GenerateRequest, defaults: GenerationDefaults) -> dict[str, Any]:
        temperature = defaults.temperature if request.temperature is None else request.temperature
        repetition_penalty = (
            defaults.repetition_penalty if request.repetition_penalty is None else request.repetition_penalty
        )
        if temperature == 0:
            return {"do_sample": False, "repetition_penalty": repetition_penalty}
        return {
            "do_sample": True,
            "temperature": temperature,
            "top_p": defaults.top_p if request.top_p is None else request.top_p,
            "top_k": defaults.top_k if request.top_k is None else request.top_k,
            "repetition_penalty": repetition_penalty,
        }

    # ---- embeddings and classification: one request, or many run through the model together ------------

    def embed(self, model_id: str, request: EmbedRequest) -> EmbedResult:
        return self.embed_many(model_id, [request])[0]

    def embed_many(self, model_id: str, requests: list[EmbedRequest]) -> list[EmbedResult]:
        """Every input of every request in one length-sorted pass; each request gets its own result."""
        loaded = self._registry.get(model_id, "embed")

        def forward(batch: Any) -> list[list[float]]:
            hidden = loaded.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu().double().numpy()
            # Eight decimals keep what float32 holds (≈ 1e-8 at these magnitudes) and halve the JSON that
            # every result costs to encode, send and store. NumPy rounds a batch six times faster than torch
            # on a CPU, to the same bits (both scale, round half to even and scale back).
            return numpy.round(vectors, 8).tolist()  # type: ignore[no-any-return]

        outputs = self._run_texts(model_id, loaded, requests, forward)
        return [
            EmbedResult(
                model=model_id,
                data=[Embedding(index=i, embedding=vector) for i, vector in enumerate(vectors)],
                usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
            )
            for vectors, tokens in outputs
        ]

    def classify(self, model_id: str, request: ClassifyRequest) -> ClassifyResult:
        return self.classify_many(model_id, [request])[0]

    def classify_many(self, model_id: str, requests: list[ClassifyRequest]) -> list[ClassifyResult]:
        loaded = self._registry.get(model_id, "classify")
        id2label = loaded.model.config.id2label
        multi_label = loaded.model.config.problem_type == "multi_label_classification"

        def forward(batch: Any) -> list[list[LabelScore]]:
            logits = loaded.model(**batch).logits.float()
            scores = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
            ranked = [sorted(enumerate(row), key=lambda pair: pair[1], reverse=True) for row in scores.tolist()]
            return [[LabelScore(label=str(id2label[i]), score=score) for i, score in row] for row in ranked]

        outputs = self._run_texts(model_id, loaded, requests, forward)
        return [
            ClassifyResult(
                model=model_id,
                labels=labels[0],
                data=[Classification(index=i, labels=scores) for i, scores in enumerate(labels)],
                usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
            )
            for labels, tokens in outputs
        ]

    def _run_texts(
        self,
        model_id: str,
        loaded: LoadedModel,
        requests: list[EmbedRequest] | list[ClassifyRequest],
        forward: Callable[[Any], list[T]],
    ) -> list[tuple[list[T], int]]:
        """Run ``forward`` over all texts of all requests in length-sorted batches; per request, its outputs
        in input order and its token count."""
        owners = [(r, i) for r, request in enumerate(requests) for i in range(len(request.input))]
        texts = [requests[r].input[i] for r, i in owners]
        outputs: list[list[Any]] = [[None] * len(request.input) for request in requests]
        tokens = [0] * len(requests)

        def encode() -> Any:
            return loaded.tokenizer(texts, truncation=True, max_length=loaded.max_length)

        encoded = _run_model(model_id, loaded, encode)  # once: the token counts sort, the ids are padded per pass
        batches = length_sorted_batches([len(ids) for ids in encoded["input_ids"]], self._batch_size)
        for number, indices in enumerate(batches):
            if number:
                between_passes()  # waiting interactive jobs run here, not after the whole call

            def one_pass(indices: list[int] = indices) -> list[tuple[int, Any, int]]:
                batch = {
                    name: tensor.to(loaded.device)
                    for name, tensor in padded_rows(loaded.tokenizer, encoded, indices).items()
                }
                lengths = batch["attention_mask"].sum(dim=1).tolist()
                return list(zip(indices, forward(batch), lengths, strict=True))

            for index, output, length in _run_model(model_id, loaded, one_pass):
                request_index, input_index = owners[index]
                outputs[request_index][input_index] = output
                tokens[request_index] += int(length)
        return list(zip(outputs, tokens, strict=True))
