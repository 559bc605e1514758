"""Model calls run on one thread of the process, with the caller's context, and come back as a direct call does."""

from __future__ import annotations

import contextvars
import multiprocessing
import threading

import pytest

from llm_router.workers.model_thread import on_model_thread

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def _thread_name() -> str:
    return threading.current_thread().name


def test_calls_run_on_one_thread_of_their_own_with_the_callers_context() -> None:
    token = WHO.set("job 7")
    try:
        seen = [on_model_thread(lambda: (_thread_name(), WHO.get())) for _ in range(3)]
    finally:
        WHO.reset(token)
    names = {name for name, _ in seen}
    assert len(names) == 1 and names != {threading.current_thread().name}
    assert [who for _, who in seen] == ["job 7"] * 3
    assert on_model_thread(WHO.get) == "nobody", "each call takes its caller's context, not the last one's"


def test_an_error_comes_back_to_the_caller_and_the_thread_goes_on() -> None:
    def fail() -> None:
        raise ValueError("a bad shape")

    with pytest.raises(ValueError, match="a bad shape"):
        on_model_thread(fail)
    assert on_model_thread(lambda: 2 + 2) == 4


def test_a_call_made_from_the_model_thread_runs_there_at_once() -> None:
    outer = on_model_thread(lambda: (_thread_name(), on_model_thread(_thread_name)))
    assert outer[0] == outer[1]


def _in_child(results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    results.put(on_model_thread(lambda: 21 * 2))


def test_a_forked_process_gets_a_model_thread_of_its_own() -> None:
    on_model_thread(lambda: None)  # the parent's thread exists before the fork
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_in_child, args=(results,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0 and results.get(timeout=5) == 42
