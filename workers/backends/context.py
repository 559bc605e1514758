"""What a backend is built from: the catalogue, the settings, the model registry and the HTTP clients of a
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
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def http(self) -> httpx.Client:
        """The calling thread's HTTP client, made on its first call. One client per thread, each with a small
        pool, rather than one pool for the remote pool's hundreds of threads: httpcore walks every connection
        of its pool on each request and each response's close, which at 200 in flight cost more CPU than the
        rest of a job's call."""
        from llm_router.workers.backends.http import THREAD_CONNECTIONS, make_client

        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = make_client(self.settings.request_timeout_s, THREAD_CONNECTIONS)
        return client

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
            caller=HttpCaller(self.http, provider, self.settings.hf_api_key, model_tokens),
            counter=TokenCounter(self.settings.models_dir, self.settings.hf_cache_dir),
            catalogue=self.catalogue,
            default_base_url=default_base_url,
            wait_for_model=self.settings.hf_wait_for_model,
        )
