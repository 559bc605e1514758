"""The JSON columns' serializer writes what the standard library writes, faster."""

from __future__ import annotations

import json
from enum import StrEnum

from llm_router.tasks.database import json_text


class Colour(StrEnum):
    RED = "red"


def test_json_text_reads_back_as_the_standard_library_writes_it() -> None:
    value = {
        "embedding": [0.12345678, -1e-08, 3.0, 1.5e300],
        "labels": {0: "NEGATIVE", 1: "POSITIVE"},  # keys that are not strings become strings
        "status": Colour.RED,
        "text": 'naïve — ünïcode \u2028 "quoted"',
        "nested": [{"a": None, "b": True}, []],
        "count": 2**62,
    }
    assert json.loads(json_text(value)) == json.loads(json.dumps(value))
    assert json.loads(json_text(value))["embedding"][1] == -1e-08  # floats keep every digit


def test_a_nul_is_written_as_the_replacement_character_anywhere_in_the_value() -> None:
    value = {"text": "before\u0000after", "k\u0000": ["\u0000", 1], "escaped": "a literal \\u0000 stays"}
    assert json.loads(json_text(value)) == {
        "text": "before\ufffdafter",
        "k\ufffd": ["\ufffd", 1],
        "escaped": "a literal \\u0000 stays",  # a backslash and five characters: no NUL, nothing changed
    }
