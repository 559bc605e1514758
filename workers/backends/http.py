"""Shared HTTP plumbing for the remote backends: one pooled client per process, one translation of
httpx errors and HTTP statuses into our exception tree. Nothing above this module sees ``httpx.*``.

The bearer token is added per request and never appears in an error message: messages name the
provider, the status and the model, and quote at most 200 characters of the server's own error text.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import httpx
from pydantic import SecretStr

from llm_router.tasks.errors import (
    ModelFailed,
    ModelLoading,
    ModelNotFound,
    NetworkError,
    RateLimited,
    RemoteRejected,
    RouterError,
    ServerError,
    Unauthorised,
)
from llm_router.tasks.redaction import redact

THREAD_CONNECTIONS = 8  # a thread makes one call at a time; a few hosts' connections kept alive
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class PlannedCall(Generic[T_co]):
    """One POST of JSON, planned apart from how it is sent: the threads' caller and the event loop's send the
    same plan, and ``answer`` turns the decoded body into what the backend returns (raising ``unexpected``
    for a body it cannot read)."""

    url: str
    payload: Any
    model_id: str
    answer: Callable[[Any], T_co]
    headers: dict[str, str] = field(default_factory=dict)


def make_client(timeout_s: float, connections: int = THREAD_CONNECTIONS) -> httpx.Client:
    """A pooled client keeping up to ``connections`` connections alive."""
    return httpx.Client(
        # A call waiting for a free connection waits as long as the calls ahead of it may take.
        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s), pool=None),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        follow_redirects=False,
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return max(0.0, (when - current).total_seconds())


def _error_text(response: httpx.Response, secrets: list[str]) -> str:
    """The server's own error text, secrets taken out before it is cut (a cut token would still leak)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return redact(response.text, secrets)[:200]
    if isinstance(body, dict):
        error = body.get("error", body.get("message", body.get("detail", "")))
        if isinstance(error, dict):
            error = error.get("message", "")
        return redact(str(error), secrets)[:200]
    return ""


def _estimated_time(response: httpx.Response) -> float | None:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    value = body.get("estimated_time") if isinstance(body, dict) else None
    return float(value) if isinstance(value, (int, float)) and value >= 0 else None


def error_for_response(
    response: httpx.Response, provider: str, model_id: str, secrets: list[str] | None = None
) -> RouterError:
    status = response.status_code
    detail = _error_text(response, secrets or [])
    message = f"{provider} answered {status} for {model_id}" + (f": {detail}" if detail else "")
    if status == 503:
        hint = _estimated_time(response)
        if hint is None:
            hint = parse_retry_after(response.headers.get("retry-after"))
        return ModelLoading(message, retry_after_s=hint, http_status=status)
    if status == 429:
        return RateLimited(
            message, retry_after_s=parse_retry_after(response.headers.get("retry-after")), http_status=status
        )
    if status >= 500:
        return ServerError(message, http_status=status)
    if status in (401, 403):
        return Unauthorised(message, http_status=status)
    if status == 404:
        return ModelNotFound(message, http_status=status)
    if status == 424:  # TEI: the model failed on this input
        return ModelFailed(message, http_status=status)
    return RemoteRejected(message, http_status=status)


class HttpCaller:
    """POSTs JSON and returns the decoded body, raising our errors for every failure.

    ``token`` is the provider's key; ``model_tokens`` holds keys that the catalogue gives single models."""

    def __init__(
        self,
        client: httpx.Client | Callable[[], httpx.Client],
        provider: str,
        token: SecretStr | None,
        model_tokens: dict[str, SecretStr | None] | None = None,
    ):
        # A client, or what gives the calling thread its own (BackendContext.http).
        self._client_of: Callable[[], httpx.Client] = client if callable(client) else (lambda: client)
        self.provider = provider
        self._token = token
        self._model_tokens = model_tokens or {}

    def secrets(self) -> list[str]:
        tokens = [self._token, *self._model_tokens.values()]
        return [token.get_secret_value() for token in tokens if token is not None]

    def _auth(self, model_id: str | None) -> dict[str, str]:
        token = self._model_tokens.get(model_id, self._token) if model_id else self._token
        return {} if token is None else {"Authorization": f"Bearer {token.get_secret_value()}"}

    def run(self, planned: PlannedCall[T]) -> T:
        return planned.answer(self.post(planned.url, planned.payload, planned.model_id, planned.headers))

    def headers(
        self, model_id: str, headers: dict[str, str] | None, accept: str = "application/json"
    ) -> dict[str, str]:
        """A request's headers: the call's own and its bearer token."""
        return {"Accept": accept, **(headers or {}), **self._auth(model_id)}

    def post(self, url: str, payload: Any, model_id: str, headers: dict[str, str] | None = None) -> Any:
        with self.network_errors(model_id):
            response = self._client_of().post(url, json=payload, headers=self.headers(model_id, headers))
        return self.body_of(response, model_id)

    @contextmanager
    def network_errors(self, model_id: str) -> Iterator[None]:
        """httpx's timeouts and transport failures (the event loop's transport's included) as ``NetworkError``."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise NetworkError(f"{self.provider} timed out for {model_id} ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise NetworkError(f"{self.provider} connection failed for {model_id} ({type(exc).__name__})") from exc

    def body_of(self, response: httpx.Response, model_id: str) -> Any:
        """A read response's decoded JSON body; an error status or a body that is not JSON raises ours."""
        if response.status_code >= 400:
            raise error_for_response(response, self.provider, model_id, self.secrets())
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelFailed(f"{self.provider} sent a body that is not JSON for {model_id}") from None

    def stream_post(
        self, url: str, payload: Any, model_id: str, headers: dict[str, str] | None = None
    ) -> Generator[Any, None, None]:
        """POST JSON and yield the JSON of each server-sent event until ``data: [DONE]`` (or the end of the
        body). Closing the generator closes the connection: the server sees the client go."""
        all_headers = self.headers(model_id, headers, "text/event-stream")
        with (
            self.network_errors(model_id),
            self._client_of().stream("POST", url, json=payload, headers=all_headers) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise error_for_response(response, self.provider, model_id, self.secrets())
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # comments, event names, the blank lines between events
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except json.JSONDecodeError:
                    raise ModelFailed(f"{self.provider} streamed an event that is not JSON for {model_id}") from None
                yield event

    def get_status(self, url: str, model_id: str | None = None) -> int:
        """The status of a GET (for model status checks); network failures raise ``NetworkError``."""
        try:
            return self._client_of().get(url, headers=self._auth(model_id)).status_code
        except httpx.TransportError as exc:
            raise NetworkError(f"{self.provider} unreachable ({type(exc).__name__})") from exc


def unexpected(provider: str, model_id: str, what: str) -> ModelFailed:
    return ModelFailed(f"{provider} sent an unexpected response for {model_id}: {what}")
