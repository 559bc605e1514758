"""A retried streamed generation continues its stream without repeating what was sent."""

from __future__ import annotations

from llm_router.workers.streaming import Continuation


def test_a_retry_carries_a_cut_stream_on_without_repeating_and_restarts_it_when_its_text_differs() -> None:
    same = Continuation("Paris is")
    assert [same.feed(piece) for piece in ["Par", "is", " is", " the", " capital"]] == [
        (False, ""),
        (False, ""),
        (False, ""),
        (False, " the"),
        (False, " capital"),
    ]
    straddling = Continuation("Paris is")
    assert straddling.feed("Paris is the") == (False, " the")  # a piece that crosses the end of what was sent
    other = Continuation("Paris is")
    assert other.feed("Pa") == (False, "")
    assert other.feed("ndas") == (True, "Pandas")  # another text: restart, then the whole of it
    assert other.feed(" eat") == (False, " eat")
    assert Continuation("").feed("first") == (False, "first")
