"""Typed errors of the VibeDream API. Each carries the HTTP status and the API's own message."""

from __future__ import annotations

from typing import Any


class VibeDreamError(Exception):
    """Base of every error this provider raises about the VibeDream API.

    :param message: what went wrong, in words a DAG author can act on.
    :param status_code: the HTTP status of the API's answer, when there was one.
    :param api_message: the API's own error text, verbatim, when it gave one.
    :param prediction_id: the prediction concerned, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        api_message: str | None = None,
        prediction_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.api_message = api_message
        self.prediction_id = prediction_id


class VibeDreamConfigError(VibeDreamError, ValueError):
    """The client cannot be built: no API key, a malformed base URL, a bad connection extra."""


class VibeDreamValidationError(VibeDreamError, ValueError):
    """A request parameter is invalid (checked locally before sending, or a 400/422 from the API).

    :param field: the name of the offending parameter, when known.
    """

    def __init__(self, message: str, *, field: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.field = field


class VibeDreamInputRefusedError(VibeDreamValidationError):
    """The input's bytes are not an image the API accepts (its format, its header): the same bytes
    are refused every time, so the ledger records them as a known-bad input."""


class VibeDreamAuthError(VibeDreamError):
    """401/403: the API key is missing, wrong or not allowed to do this."""


class VibeDreamNotFoundError(VibeDreamError):
    """404: the model or prediction does not exist (for this API key)."""


class VibeDreamRateLimitedError(VibeDreamError):
    """429: too many requests. ``retry_after`` is the server's requested wait, in seconds.

    :param retry_after: seconds the server asked to wait before the next request, if it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class VibeDreamServerError(VibeDreamError):
    """408 or 5xx: the API failed to answer this time; a later attempt may succeed."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class VibeDreamTransportError(VibeDreamError):
    """No HTTP answer at all: connect error, read timeout, dropped connection.

    :param request_sent: False only when the request surely never reached the server (connect error,
        connect or pool timeout); a submit may then be retried without risk of a second job.
    """

    def __init__(self, message: str, *, request_sent: bool, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.request_sent = request_sent


class VibeDreamSubmissionStateUnknownError(VibeDreamError):
    """A submit failed after the request was sent: the job may or may not exist (and be billed).

    The client never resubmits in this case, because a second job would be billed twice.
    """


class VibeDreamProtocolError(VibeDreamError):
    """The API answered with something that is not the documented JSON."""


class VibeDreamAnswerMismatchError(VibeDreamProtocolError):
    """A status answer for another prediction (or another model) than the one polled: a confused
    API, a caching proxy or a redirect to another service. Never a result: it is read like an
    unreadable answer (polled again until the deadline).

    :param polled_id: the prediction that was polled.
    :param answered_id: the id the answer carried.
    :param expected_model: the model that was asked, when known.
    :param answered_model: the ``modelId`` the answer carried, when it had one.
    """

    def __init__(
        self,
        message: str,
        *,
        polled_id: str,
        answered_id: str,
        expected_model: str | None = None,
        answered_model: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, prediction_id=polled_id, **kwargs)
        self.polled_id = polled_id
        self.answered_id = answered_id
        self.expected_model = expected_model
        self.answered_model = answered_model


class VibeDreamPredictionFailedError(VibeDreamError):
    """The prediction ended with status ``failed``; ``api_message`` holds the API's reason."""

    @classmethod
    def of(cls, prediction_id: str, reason: str | None) -> VibeDreamPredictionFailedError:
        """The error of prediction ``prediction_id``, failed for ``reason`` (the API's words)."""
        return cls(
            f"VibeDream prediction {prediction_id} failed: {reason or 'no reason given'}",
            api_message=reason,
            prediction_id=prediction_id,
        )


class VibeDreamTimeoutError(VibeDreamError):
    """The prediction did not finish before the deadline; ``prediction_id`` says which one to check."""


class OutputStorageError(VibeDreamError):
    """An output could not be downloaded, decoded or written."""


class OutputIncompleteError(OutputStorageError):
    """An output's bytes ended before the image did (a cut download): downloaded again, a bounded
    number of times, then this error."""


class InvalidOutputError(OutputStorageError):
    """An output is complete but not what was asked (format, size, aspect ratio): nothing is stored
    at its name and it is not downloaded again; no retry of the task can change the job's output.

    :param problems: what differed, one phrase each.
    """

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class UnsafeLocalPathError(OutputStorageError):
    """Something below a local ``output_path`` is not what VibeDream writes or reads there: a symbolic
    link (which would send a write, or a read, outside ``output_path``), a FIFO or device, or a file
    larger than allowed. Nothing is written through it and nothing is read from it.

    :param message: what was refused and where.
    :param path: the offending path (absolute).
    :param reason: why, in a few words (``is a symbolic link``); never any of the file's content.
    """

    def __init__(self, message: str, *, path: str, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


# -- which errors no retry can cure (no Airflow here: the rule is the API's, the tasks apply it) ------

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
