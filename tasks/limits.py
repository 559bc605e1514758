"""Input limits, in one place so that errors, docs and tests quote the same numbers."""

from typing import Final

MAX_PROMPT_CHARS: Final = 32_000
MAX_MESSAGES: Final = 64
MAX_MESSAGE_CHARS: Final = 32_000
MAX_TOKENS_CAP: Final = 2_048
MAX_INPUTS: Final = 256
MAX_INPUT_CHARS: Final = 8_192
MAX_MODEL_ID_CHARS: Final = 200
MAX_STOP_SEQUENCES: Final = 8
MAX_DEADLINE_S: Final = 7 * 24 * 3600.0  # a job may wait to start at most a week
MAX_PRIORITY: Final = 9  # a job's priority runs from 0 (the default) to 9, higher first
MAX_CALLBACK_URL_CHARS: Final = 2_048
