"""Parsing raw task arguments: what a queue may carry, and what is refused."""

from __future__ import annotations

import uuid

import pytest

from workers.messages import BadBulkMessage, BadMessage, parse_message, parse_messages

ID = str(uuid.uuid4())

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


def test_a_bulk_message_carries_many_job_ids() -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    assert [m.job_id for m in parse_messages((), {"job_ids": ids})] == ids
    assert [m.job_id for m in parse_messages((ids[0],), {})] == [ids[0]]


@pytest.mark.parametrize(
    ("kwargs", "args", "readable", "words"),
    [
        ({"job_ids": "x"}, (), None, "expected a list"),
        ({"job_ids": []}, (), 0, "expected 1 to 1024"),
        ({"job_ids": [ID] * 2}, (), 1, "appears twice"),
        ({"job_ids": [ID, "nope", 7]}, (), 1, "2 of 3 entries"),
        ({"job_ids": [ID], "cursor": {}}, (), 1, "nothing else"),
        ({"job_ids": [ID]}, (ID,), 1, "nothing else"),
        ({"job_ids": [str(uuid.uuid4()) for _ in range(1025)]}, (), 1024, "expected 1 to 1024"),
    ],
)
def test_bad_bulk_messages_name_the_ids_they_could_read(
    kwargs: dict[str, object], args: tuple[object, ...], readable: int | None, words: str
) -> None:
    with pytest.raises(BadMessage, match=words) as caught:
        parse_messages(args, kwargs)
    if readable is None:
        assert not isinstance(caught.value, BadBulkMessage)
    else:
        assert isinstance(caught.value, BadBulkMessage) and len(caught.value.job_ids) == readable
