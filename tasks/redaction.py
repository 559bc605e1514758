"""Taking secrets out of any text the project stores, logs or prints.

A remote server's error body may echo the request's ``Authorization`` header (gateways do), and an
exception's text may quote a URL with a password. Known secrets (the configured tokens) are replaced
wherever they appear; anything shaped like a bearer credential or a Hugging Face / OpenAI-style key is
replaced too, so a secret this process was never told about is still caught.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MASK = "***"
_SHAPES = (
    re.compile(r"(?i)\b(bearer|basic|token)(\s+|=|:\s*)[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{6,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"),
    re.compile(r"(?i)(\w+://[^/\s:@]*:)[^@\s/]+@"),  # a password inside a URL
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    text = _SHAPES[0].sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _SHAPES[1].sub(MASK, text)
    text = _SHAPES[2].sub(MASK, text)
    return _SHAPES[3].sub(lambda m: f"{m.group(1)}{MASK}@", text)


def redact_optional(text: str | None) -> str | None:
    return None if text is None else redact(text)


class RedactingFilter(logging.Filter):
    """Rewrites each log record's message without secrets (installed on the handlers of a worker process)."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self._secrets)
        if record.exc_info and record.exc_info[1] is not None:
            # The traceback text is formatted later from exc_info: fold it into the message, redacted.
            cleaned = redact(f"{cleaned}\n{logging.Formatter().formatException(record.exc_info)}", self._secrets)
            record.exc_info, record.exc_text = None, None
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction(secrets: Iterable[str] = ()) -> None:
    """Redact every record that reaches the root logger's handlers in this process."""
    log_filter = RedactingFilter(secrets)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(log_filter)
