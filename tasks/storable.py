"""Text as the database can keep it: one rule for every string the store writes.

PostgreSQL refuses U+0000 (NUL) in ``text`` and in ``jsonb`` alike ("cannot contain NUL", "unsupported Unicode
escape sequence"), and a model's answer, a remote server's error body or a custom id in a batch file can hold
one. Every such string is written with each NUL replaced by U+FFFD, the replacement character: the rest of the
text is kept as it was, and a reader sees where something was taken out. Input a caller sends is refused
instead (a clear error naming the field); this rule is for what the cluster itself must record.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

NUL = "\x00"
REPLACEMENT = "\ufffd"


def storable_text(text: str) -> str:
    return text.replace(NUL, REPLACEMENT) if NUL in text else text


def storable_json(value: Any) -> Any:
    """``value`` with every string in it (keys too) made storable."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_json(key): storable_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable_json(item) for item in value]
    return value


class StorableText(TypeDecorator[str]):
    """A ``text`` column whose values are written by the rule above."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return storable_text(value) if value is not None else None


class StorableString(TypeDecorator[str]):
    """A ``varchar(n)`` column whose values are written by the rule above."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return storable_text(value) if value is not None else None
