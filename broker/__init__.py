"""How jobs travel: the Celery app, queues, routing and the producer client.

``celery -A broker worker`` finds the app as ``broker.app``; it is built on first access so that
importing ``llm_router.broker.client`` or ``llm_router.broker.settings`` stays light.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from llm_router.broker.celery_app import create_app

        app = create_app()
        globals()["app"] = globals()["celery"] = app
        return app
    raise AttributeError(name)
