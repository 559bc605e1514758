"""Parsing raw task arguments: what a queue may carry, and what is refused."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from llm_router.broker.transports.redis import from_unacked
from llm_router.workers.held_messages import job_ids_in
from llm_router.workers.messages import BadBulkMessage, BadMessage, parse_message, parse_messages

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


def _held(args: list[Any], kwargs: dict[str, Any], *, base64_body: bool = True) -> bytes:
    """A message as kombu's Redis transport keeps it unacknowledged: [message, exchange, routing key]."""
    body = json.dumps([args, kwargs, {}]).encode()
    encoded = base64.b64encode(body).decode() if base64_body else body.decode()
    properties = {"body_encoding": "base64"} if base64_body else {}
    return json.dumps([{"body": encoded, "properties": properties}, "", "fast"]).encode()


def test_the_jobs_of_a_held_message_are_read_and_anything_else_reads_as_none() -> None:
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    assert job_ids_in(from_unacked(_held([one], {}))) == [one]
    assert job_ids_in(from_unacked(_held([], {"job_ids": [one, two]}))) == [one, two]
    assert job_ids_in(from_unacked(_held([one], {}, base64_body=False))) == [one]
    # a bad bulk message: the ids it could read
    assert job_ids_in(from_unacked(_held([], {"job_ids": [one, "not-an-id"]}))) == [one]
    for garbage in (None, b"", b"{", b"[1, 2]", json.dumps([{"body": "!!"}, "", "q"]).encode(), _held(["x"], {})):
        assert job_ids_in(from_unacked(garbage)) == []
