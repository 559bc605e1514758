"""Parsing raw task arguments: what a queue may carry, and what is refused."""

from __future__ import annotations

import uuid

import pytest

from tasks.messages import BadMessage, parse_message

JOB = str(uuid.uuid4())


def test_the_client_form_is_the_job_id_alone() -> None:
    message = parse_message((JOB,), {})
    assert message.job_id == JOB and message.request is None


def test_a_hand_written_producer_may_send_the_request() -> None:
    message = parse_message((), {"job_id": JOB, "request": {"prompt": "hi"}})
    assert message.request == {"prompt": "hi"}


@pytest.mark.parametrize(
    ("args", "kwargs", "has_id", "words"),
    [
        ((), {}, False, "job_id"),  # nothing at all
        (("not-a-uuid",), {}, False, "UUID"),  # an id that is not one
        ((42,), {}, False, "int"),  # wrong type
        ((JOB, "extra"), {}, True, "unexpected arguments"),  # too many positional arguments
        ((), {"job_id": JOB, "evil": 1}, True, "evil"),  # unknown keyword
        ((), {"job_id": JOB, "request": "text"}, True, "request"),  # request not an object
    ],
)
def test_bad_messages(args: tuple[object, ...], kwargs: dict[str, object], has_id: bool, words: str) -> None:
    with pytest.raises(BadMessage) as caught:
        parse_message(args, kwargs)
    assert (caught.value.job_id is not None) == has_id
    assert words in str(caught.value)
