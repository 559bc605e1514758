"""The Hugging Face Hub: search models, describe one, download one into the cache for local workers.

Every call goes through ``huggingface_hub.HfApi`` (``HF_ENDPOINT`` picks another Hub); its errors become
ours here, once: ``HubUnavailable`` (offline mode, or no answer), ``ModelNotFound`` (no such model or
revision), ``ModelGated`` (an access request this token lacks), ``InvalidRequest`` (a bad option).
The guide's search options map onto the current Hub API: ``task`` → ``pipeline_tag``, ``language`` and
``tags`` → ``filter``, ``sort`` → the Hub's sort keys (always descending).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from llm_router.broker.settings import Settings
from llm_router.tasks.errors import HubUnavailable, InvalidRequest, ModelGated, ModelNotFound

SortKey = Literal["downloads", "likes", "trending", "created", "modified"]
SORT_KEYS: tuple[str, ...] = get_args(SortKey)
_HUB_SORT = {
    "downloads": "downloads",
    "likes": "likes",
    "trending": "trending_score",
    "created": "created_at",
    "modified": "last_modified",
}
MAX_SEARCH_RESULTS = 1000
# What a search asks the Hub to return for each model: enough for the table, nothing heavier.
_SEARCH_FIELDS = ["pipeline_tag", "library_name", "downloads", "likes", "tags", "createdAt", "inferenceProviderMapping"]
REACH_TIMEOUT_S = 3.0  # a connection to the Hub's host, before a search
_INFO_FIELDS = [
    "pipeline_tag",
    "library_name",
    "downloads",
    "likes",
    "tags",
    "cardData",
    "gated",
    "safetensors",
    "usedStorage",
    "inferenceProviderMapping",
    "sha",
    "lastModified",
]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-:]{0,95}$")  # a task, language, tag, author or provider
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._\-]{0,95})?$")
_DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_DTYPE_BYTES |= {"I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class SearchQuery:
    """The guide's ``searchModels`` options. ``provider``: only models an Inference Provider serves
    (``hf-inference``, another provider's name, or ``all`` for any)."""

    task: str | None = None
    language: str | None = None
    tags: tuple[str, ...] = ()
    author: str | None = None
    search: str | None = None
    sort: SortKey = "downloads"
    limit: int = 10
    provider: str | None = None

    def __post_init__(self) -> None:
        for name in ("task", "language", "author", "provider"):
            _check_name(name, getattr(self, name))
        for tag in self.tags:
            _check_name("tags", tag)
        if self.sort not in SORT_KEYS:
            raise InvalidRequest(f"sort: {self.sort!r} is not one of {', '.join(SORT_KEYS)}", field="sort")
        if not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_SEARCH_RESULTS:
            raise InvalidRequest(f"limit: expected 1 to {MAX_SEARCH_RESULTS}, got {self.limit!r}", field="limit")
        if self.search is not None and not 0 < len(self.search) <= 200:
            raise InvalidRequest("search: expected 1 to 200 characters", field="search")

    def list_models_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``HfApi.list_models`` this query means."""
        filters = [*([self.language] if self.language else []), *self.tags]
        arguments: dict[str, Any] = {
            "pipeline_tag": self.task,
            "filter": filters or None,
            "author": self.author,
            "search": self.search,
            "sort": _HUB_SORT[self.sort],
            "limit": self.limit,
            "inference_provider": self.provider,
            "expand": _SEARCH_FIELDS,
        }
        return {name: value for name, value in arguments.items() if value is not None}


def _check_name(option: str, value: str | None) -> None:
    if value is not None and not (isinstance(value, str) and _NAME.match(value)):
        raise InvalidRequest(
            f"{option}: {value!r} is not a Hub name (letters, digits, '.', '_', '-', ':'; up to 96)", field=option
        )


def check_model_id(model_id: str) -> str:
    if not isinstance(model_id, str) or not _MODEL_ID.match(model_id):
        raise InvalidRequest(f"model: {model_id!r} is not a Hub model id (such as 'owner/name')", field="model")
    return model_id


@dataclass(frozen=True)
class ProviderRoute:
    provider: str
    status: str  # live, staging or error
    task: str


@dataclass(frozen=True)
class ModelSummary:
    id: str
    task: str | None
    library: str | None
    downloads: int | None
    likes: int | None
    created_at: datetime | None
    providers: list[str]


@dataclass(frozen=True)
class ModelDetails:
    id: str
    task: str | None
    library: str | None
    downloads: int | None
    likes: int | None
    tags: list[str]
    parameters: int | None
    weights_bytes: int | None  # the safetensors weights, from their dtypes; else the repository's storage
    licence: str | None
    gated: str | bool
    revision: str | None
    last_modified: datetime | None
    providers: list[ProviderRoute]
    tiers: list[str] = field(default_factory=list)  # this catalogue's tiers that run the model


def _routes(info: Any) -> list[ProviderRoute]:
    mapping = getattr(info, "inference_provider_mapping", None) or []
    return [ProviderRoute(str(m.provider), str(m.status), str(m.task)) for m in mapping]


def _licence(info: Any) -> str | None:
    card = getattr(info, "card_data", None)
    licence = getattr(card, "license", None) if card is not None else None
    if licence:
        return str(licence)
    return next((tag.split(":", 1)[1] for tag in info.tags or [] if tag.startswith("license:")), None)


def _weights(info: Any) -> tuple[int | None, int | None]:
    safetensors = getattr(info, "safetensors", None)
    if safetensors is None:
        return None, getattr(info, "used_storage", None)
    counts = dict(safetensors.parameters or {})
    size = sum(count * _DTYPE_BYTES.get(dtype.upper(), 4) for dtype, count in counts.items())
    return int(safetensors.total), size


class Hub:
    """One Hub endpoint, with the token it may use. ``offline`` (``HF_HUB_OFFLINE``) refuses every call."""

    def __init__(
        self, endpoint: str | None, token: str | None, *, offline: bool = False, cache_dir: Path | None = None
    ):
        self.endpoint = (endpoint or "https://huggingface.co").rstrip("/")
        self._token = token
        self._offline = offline
        self.cache_dir = cache_dir
        self._api = HfApi(endpoint=self.endpoint, token=token or False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Hub:
        token = settings.hf_api_key.get_secret_value() if settings.hf_api_key else None
        return cls(settings.hf_endpoint, token, offline=settings.hf_hub_offline, cache_dir=settings.hf_cache_dir)

    def search(self, query: SearchQuery) -> list[ModelSummary]:
        with self._translated("search"):
            self._check_reachable()
            found = list(self._api.list_models(**query.list_models_arguments()))
        return [
            ModelSummary(
                id=info.id,
                task=info.pipeline_tag,
                library=info.library_name,
                downloads=info.downloads,
                likes=info.likes,
                created_at=info.created_at,
                providers=[route.provider for route in _routes(info)],
            )
            for info in found
        ]

    def info(self, model_id: str, revision: str | None = None) -> ModelDetails:
        check_model_id(model_id)
        with self._translated(model_id):
            info = self._api.model_info(model_id, revision=revision, expand=_INFO_FIELDS)  # type: ignore[arg-type]
        parameters, weights = _weights(info)
        return ModelDetails(
            id=info.id,
            task=info.pipeline_tag,
            library=info.library_name,
            downloads=info.downloads,
            likes=info.likes,
            tags=list(info.tags or []),
            parameters=parameters,
            weights_bytes=weights,
            licence=_licence(info),
            gated=info.gated if info.gated is not None else False,
            revision=info.sha,
            last_modified=info.last_modified,
            providers=_routes(info),
        )

    def download(self, model_id: str, revision: str | None = None, *, progress: bool = True) -> Path:
        """The model's files in the Hugging Face cache (``cache_dir``, else the default), fetched when missing:
        afterwards a catalogue entry with ``provider = "local"`` loads it with no network."""
        check_model_id(model_id)
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if progress else disable_progress_bars)()
        with self._translated(model_id):
            token = self._token or False
            folder = snapshot_download(
                model_id, revision=revision, cache_dir=self.cache_dir, endpoint=self.endpoint, token=token
            )
        return Path(folder)

    def _check_reachable(self) -> None:
        """Fail at once when the Hub's host cannot even be connected to (no network, no such name, nothing
        listening): the client's own retries of a search would otherwise take ~25 s and print a warning each."""
        address = urlsplit(self.endpoint)
        port = address.port or (443 if address.scheme == "https" else 80)
        try:
            socket.create_connection((address.hostname or "", port), timeout=REACH_TIMEOUT_S).close()
        except OSError as exc:
            raise HubUnavailable(
                f"the Hub at {self.endpoint} cannot be reached: {exc.strerror or type(exc).__name__}"
            ) from None

    @contextmanager
    def _translated(self, subject: str) -> Iterator[None]:
        if self._offline:
            raise HubUnavailable("the Hub is not asked: offline mode is on (HF_HUB_OFFLINE=1); unset it to ask the Hub")
        try:
            yield
        except GatedRepoError:
            raise ModelGated(
                f"model {subject!r} is gated: request access on its Hub page, then set HF_TOKEN to a token that has it",
                http_status=403,
            ) from None
        except RevisionNotFoundError:
            raise ModelNotFound(f"model {subject!r}: no such revision on {self.endpoint}", http_status=404) from None
        except RepositoryNotFoundError:
            raise ModelNotFound(
                f"model {subject!r} was not found on {self.endpoint} (or it is private to another account)",
                http_status=404,
            ) from None
        except OfflineModeIsEnabled:
            raise HubUnavailable("the Hub is not asked: offline mode is on (HF_HUB_OFFLINE=1)") from None
        except LocalEntryNotFoundError as exc:
            # snapshot_download's word for "the Hub did not answer and the cache does not hold it".
            raise HubUnavailable(f"the Hub at {self.endpoint} cannot be reached, and {subject!r} is not cached") from (
                exc
            )
        except (httpx2.TransportError, ConnectionError, TimeoutError) as exc:
            raise HubUnavailable(f"the Hub at {self.endpoint} cannot be reached: {type(exc).__name__}") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise HubUnavailable(f"the Hub at {self.endpoint} answered HTTP {status} for {subject!r}") from None
