"""Interactive jobs served between the passes of a bulk model call.

A worker that serves both lanes takes wide bulk calls (up to ``--bulk-window`` inputs, sorted by length so
that little of each pass is padding). Between two passes of such a call the backend calls
``between_passes``; the worker has set it to take the interactive jobs waiting in its queues and run them
there and then, so an interactive job waits for one pass of a bulk call, not for the whole call.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_INTERLUDE: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "llm_router_interlude", default=None
)


@contextmanager
def interludes(interlude: Callable[[], None]) -> Iterator[None]:
    """While the block runs, ``between_passes`` calls ``interlude``."""
    token = _INTERLUDE.set(interlude)
    try:
        yield
    finally:
        _INTERLUDE.reset(token)


def between_passes() -> None:
    """Run the interlude the worker set, if any. It runs in a context of its own: the jobs it runs must not
    see the bulk call's row hooks (stop checks, delta sinks), and an interlude never nests in an interlude."""
    interlude = _INTERLUDE.get()
    if interlude is not None:
        contextvars.Context().run(interlude)
