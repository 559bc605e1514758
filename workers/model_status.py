"""Is a remote model ready? The seed's ``checkModelStatus`` and ``waitForModel(modelId, maxWait)``.

``GET {base}/models/{model}``: 2xx → ready, 503 → loading, anything else (or no answer) → error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from llm_router.tasks.errors import NetworkError
from llm_router.workers.backends.http import HttpCaller

ModelStatus = Literal["ready", "loading", "error"]


def check_model_status(caller: HttpCaller, base_url: str, model_id: str) -> ModelStatus:
    try:
        status = caller.get_status(f"{base_url.rstrip('/')}/models/{model_id}", model_id)
    except NetworkError:
        return "error"
    if 200 <= status < 300:
        return "ready"
    return "loading" if status == 503 else "error"


def wait_for_model(
    check: Callable[[], ModelStatus],
    max_wait_s: float,
    interval_s: float = 5.0,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[ModelStatus, int]:
    """Check until the model is ready, fails, or ``max_wait_s`` passes; returns the last status and the
    number of checks made. Only ``loading`` is waited on: an error ends the wait at once."""
    deadline = clock() + max_wait_s
    checks = 0
    while True:
        status = check()
        checks += 1
        if status != "loading" or clock() + interval_s > deadline:
            return status, checks
        sleep(interval_s)
