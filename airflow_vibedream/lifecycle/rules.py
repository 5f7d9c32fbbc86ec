"""The one permanent-error rule, for ``execute``, ``execute_complete``, the sensor and the batch.

Permanent: bad input (400/422 and local validation), a refused key (401/403), something that does
not exist (404), bad configuration, a ``failed`` prediction, a complete output that is not what was
asked (its job's output will not change), and a submit whose outcome is unknown
(a retry could create, and bill, a second job). They fail the task at once, with no retry.
Everything else (429, 5xx, network, deadlines, unreadable poll answers) is transient: Airflow's
retries may repeat the try, which reconnects to the recorded prediction instead of paying again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_vibedream.errors import (
    InvalidOutputError,
    VibeDreamAuthError,
    VibeDreamConfigError,
    VibeDreamNotFoundError,
    VibeDreamPredictionFailedError,
    VibeDreamSubmissionStateUnknownError,
    VibeDreamValidationError,
)

PERMANENT_ERRORS: tuple[type[Exception], ...] = (
    VibeDreamValidationError,
    InvalidOutputError,
    VibeDreamAuthError,
    VibeDreamNotFoundError,
    VibeDreamConfigError,
    VibeDreamPredictionFailedError,
    VibeDreamSubmissionStateUnknownError,
)


#: Words of a ``failed`` prediction's error that blame the input's bytes themselves: the API would
#: fail the same bytes the same way every time. The API text documents no error codes, so these are
#: matched in the error's words (lower case); any other failure may pass and is tried again next run.
INPUT_FAILURE_WORDS = (
    "could not be decoded",
    "cannot be decoded",
    "unsupported input image format",
    "cannot identify image",
    "not a valid image",
    "image file is truncated",
)


def input_is_bad(error: str | None) -> bool:
    """True when a failed prediction's ``error`` says its input's bytes can never succeed."""
    text = (error or "").lower()
    return any(words in text for words in INPUT_FAILURE_WORDS)


def is_permanent(exc: BaseException) -> bool:
    """True when no retry of the task can cure ``exc``."""
    return isinstance(exc, PERMANENT_ERRORS)


@contextmanager
def permanent_errors_fail_the_task() -> Iterator[None]:
    """Turn a permanent error into ``AirflowFailException`` (no retry); let the rest through."""
    try:
        yield
    except PERMANENT_ERRORS as exc:
        raise AirflowFailException(str(exc)) from exc
