"""Model calls on a thread of their own, whose Python stack starts shallow.

CPython keeps a thread's frames in chunks of 16 KB and frees a chunk as soon as the frame at its start
returns. A worker calls its model deep in Celery's stack; there a frame that ``generate`` enters at every
decoding step can land at the start of a chunk, and each step then maps and unmaps memory over a hundred times
(measured on SmolLM2: 7,700 ``mmap``/``munmap`` pairs and 8,000 page faults per 64-token job, against 400
faults for the same call in a short script), each unmap interrupting torch's other threads. A thread whose
stack starts near its base never reaches that depth.

The calls of a process run one at a time on its thread, in the caller's context (its context variables), and
the caller waits for each: the workers that run models give each process one slot (the prefork and solo
pools), so nothing that ran at once before waits now.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_executors: dict[int, ThreadPoolExecutor] = {}  # by process: a thread does not survive a fork
_starting = threading.Lock()
_here = threading.local()


def _mark() -> None:
    _here.model_thread = True


def on_model_thread(call: Callable[[], T]) -> T:
    """``call()`` on this process's model thread; returns what it returns, raises what it raises."""
    if getattr(_here, "model_thread", False):
        return call()  # a model call within a model call: already here
    pid = os.getpid()
    executor = _executors.get(pid)
    if executor is None:
        with _starting:
            executor = _executors.setdefault(pid, ThreadPoolExecutor(1, "llm-router-model", _mark))
    return executor.submit(contextvars.copy_context().run, call).result()
