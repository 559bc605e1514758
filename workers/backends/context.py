"""What a backend is built from: the catalogue, the settings, the model registry and one HTTP client per
worker process. Backends never see the rest of the worker's runtime."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llm_router.broker.catalogue import Catalogue
from llm_router.broker.settings import Settings

if TYPE_CHECKING:
    import httpx

    from llm_router.workers.backends.remote import RemoteDeps
    from llm_router.workers.registry import ModelRegistry


@dataclass
class BackendContext:
    settings: Settings
    catalogue: Catalogue
    registry: ModelRegistry
    max_batch: int  # the most inputs a local backend runs through the model at once
    http_connections: int = 1  # calls this process makes at once (the remote pool's threads)
    _http: httpx.Client | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def http(self) -> httpx.Client:
        """The process's one HTTP client (its connection pool), made on first use by whichever thread."""
        from llm_router.workers.backends.http import make_client

        with self._lock:
            if self._http is None:
                self._http = make_client(self.settings.request_timeout_s, self.http_connections)
            return self._http

    def remote(self, provider: str, default_base_url: str | None) -> RemoteDeps:
        """What a remote backend of ``provider`` needs: an HTTP caller with the tokens, a token counter."""
        from llm_router.workers.backends.http import HttpCaller
        from llm_router.workers.backends.remote import RemoteDeps
        from llm_router.workers.backends.usage import TokenCounter

        model_tokens = {
            model_id: self.settings.api_key(spec.api_key_env)
            for model_id, spec in self.catalogue.models.items()
            if spec.api_key_env is not None
        }
        return RemoteDeps(
            caller=HttpCaller(self.http(), provider, self.settings.hf_api_key, model_tokens),
            counter=TokenCounter(self.settings.models_dir, self.settings.hf_cache_dir),
            catalogue=self.catalogue,
            default_base_url=default_base_url,
            wait_for_model=self.settings.hf_wait_for_model,
        )
