"""Writing a generation's deltas as the model makes them (see ``llm_router.broker.streams``): a streamer that
transformers' ``generate`` feeds token by token, decoding the text so far and appending what is new."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import redis
from redis.exceptions import RedisError

from llm_router.broker.streams import append_delta, end_stream, restart_stream, streamed_text

log = logging.getLogger(__name__)

# Set around a backend call of a job submitted with stream=True: where the text's deltas go.
DELTAS: ContextVar[Callable[[str], None] | None] = ContextVar("llm_router_deltas", default=None)
# Set around a call of many generations at once: each row's sink (None: it does not stream).
ROW_DELTAS: ContextVar[list[Callable[[str], None] | None] | None] = ContextVar("llm_router_row_deltas", default=None)


class TokenDeltas:
    """transformers' streamer protocol (``put``, ``end``) for one sequence: the first ``put`` is the prompt
    (skipped); each later one adds a token, and the text decoded so far is compared with what was sent. A
    token that ends inside a multi-byte character waits for the next."""

    def __init__(self, tokenizer: Any, sink: Callable[[str], None]):
        self._tokenizer, self._sink = tokenizer, sink
        self._tokens: list[int] = []
        self._sent = ""
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._tokens.extend(int(token) for token in value.reshape(-1).tolist())
        text = self._tokenizer.decode(self._tokens, skip_special_tokens=True)
        if text.endswith("\ufffd") or len(text) <= len(self._sent) or not text.startswith(self._sent):
            return
        self._sink(text[len(self._sent) :])
        self._sent = text

    def end(self) -> None:
        text = self._tokenizer.decode(self._tokens, skip_special_tokens=True)
        if len(text) > len(self._sent) and text.startswith(self._sent):
            self._sink(text[len(self._sent) :])
            self._sent = text


class Continuation:
    """An attempt's text against what an earlier attempt of the job streamed before it was cut off: the
    part already sent is not sent again. A retry that makes the same text (greedy decoding, a
    deterministic server) carries the stream on where it stopped; one that makes another restarts it."""

    def __init__(self, already: str):
        self.already = already
        self.made = ""
        self.diverged = not already

    def feed(self, piece: str) -> tuple[bool, str]:
        """(restart the stream first?, the text to send) for the next piece of this attempt."""
        before, self.made = len(self.made), self.made + piece
        if self.diverged:
            return False, piece
        if self.already.startswith(self.made):
            return False, ""  # still within what was sent
        if self.made.startswith(self.already):
            return False, self.made[max(before, len(self.already)) :]
        self.diverged = True
        return True, self.made


class RowDeltas:
    """The streamer of a batched generation: each put holds one token per row; each row that streams
    decodes its own (a row that ended gets padding, which decodes to nothing)."""

    def __init__(self, tokenizer: Any, sinks: list[Callable[[str], None] | None]):
        self._rows = [(row, TokenDeltas(tokenizer, sink)) for row, sink in enumerate(sinks) if sink is not None]
        self._count = len(sinks)

    def put(self, value: Any) -> None:
        rows = value.reshape(self._count, -1)
        for row, deltas in self._rows:
            deltas.put(rows[row])

    def end(self) -> None:
        for _, deltas in self._rows:
            deltas.end()


class StreamWriter:
    """Appends one process's deltas to Redis; never fails a job for it (a reader then gets the whole text)."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)

    def sink(self, job_id: str) -> Callable[[str], None]:
        """Where one attempt's deltas go (an attempt after one that streamed carries its stream on)."""
        try:
            continuation = Continuation(streamed_text(self.client, job_id))
        except RedisError as exc:
            log.warning("job %s: its stream could not be read (%s)", job_id, exc)
            continuation = Continuation("")

        def write(piece: str) -> None:
            restart, text = continuation.feed(piece)
            try:
                if restart:
                    restart_stream(self.client, job_id)
                if text:
                    append_delta(self.client, job_id, text)
            except RedisError as exc:
                log.warning("job %s: a delta was not streamed (%s)", job_id, exc)

        return write

    def end(self, job_id: str, status: str) -> None:
        try:
            end_stream(self.client, job_id, status)
        except RedisError as exc:
            log.warning("job %s: its stream was not closed (%s)", job_id, exc)
