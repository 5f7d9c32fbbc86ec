"""The trigger event of one prediction, written and read in one place.

Every event has one shape: ``{"status", "prediction_id", "prediction", "message", "error_type",
"status_code"}``. ``error_type`` names the typed error behind an ``error`` event (e.g.
``VibeDreamAuthError`` for a 401), so the task that resumes raises that same error and the one
permanent-error rule decides it exactly as it would have in ``execute``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypedDict

from airflow_vibedream import errors
from airflow_vibedream.client.calls import deadline_reached
from airflow_vibedream.client.models import Prediction, check_answer_is_for
from airflow_vibedream.errors import (
    VibeDreamError,
    VibeDreamPredictionFailedError,
    VibeDreamProtocolError,
    VibeDreamTimeoutError,
)

#: Event statuses. Only ``success`` succeeds.
EVENT_SUCCESS = "success"
EVENT_FAILED = "failed"
EVENT_TIMEOUT = "timeout"
EVENT_ERROR = "error"

#: The typed errors an event may name (an allow-list: an event never instantiates anything else).
_ERROR_TYPES: dict[str, type[VibeDreamError]] = {
    name: klass
    for name, klass in vars(errors).items()
    if isinstance(klass, type) and issubclass(klass, VibeDreamError)
}


class PredictionEvent(TypedDict):
    """The one event of a prediction trigger.

    :param status: ``success``, ``failed``, ``timeout`` or ``error``.
    :param prediction_id: the prediction.
    :param prediction: the prediction's answer (base64 outputs left out), None for errors.
    :param message: what happened, in words.
    :param error_type: the typed error behind an ``error`` event.
    :param status_code: the HTTP status behind it, if any.
    """

    status: str
    prediction_id: str
    prediction: dict[str, Any] | None
    message: str
    error_type: str | None
    status_code: int | None


class BatchEvent(TypedDict):
    """The one event of a batch trigger.

    :param status: ``success``, ``timeout`` or ``error`` (a failed image fails only its line).
    :param total: predictions waited for.
    :param failed: the failed ones, with the API's reason.
    :param pending: the ones still processing at the deadline.
    :param message: what happened, in words.
    :param error_type: the typed error behind an ``error`` event.
    :param status_code: the HTTP status behind it, if any.
    """

    status: str
    total: int
    failed: dict[str, str]
    pending: list[str]
    message: str
    error_type: str | None
    status_code: int | None


def make_event(
    status: str,
    prediction_id: str,
    message: str,
    prediction: Prediction | None = None,
    error: VibeDreamError | None = None,
) -> PredictionEvent:
    """The one event shape."""
    return {
        "status": status,
        "prediction_id": prediction_id,
        "prediction": event_prediction(prediction) if prediction is not None else None,
        "message": message,
        "error_type": type(error).__name__ if error is not None else None,
        "status_code": error.status_code if error is not None else None,
    }


def batch_event(
    status: str,
    total: int,
    failed: dict[str, str],
    pending: list[str],
    message: str,
    error: VibeDreamError | None = None,
) -> BatchEvent:
    """The one batch event shape."""
    return {
        "status": status,
        "total": total,
        "failed": failed,
        "pending": pending,
        "message": message,
        "error_type": type(error).__name__ if error is not None else None,
        "status_code": error.status_code if error is not None else None,
    }


def error_event(prediction_id: str, error: VibeDreamError) -> PredictionEvent:
    """An ``error`` event that names its typed error."""
    return make_event(EVENT_ERROR, prediction_id, str(error), error=error)


def timeout_event(
    prediction_id: str, deadline: float, error: VibeDreamError | None = None
) -> PredictionEvent:
    """``timeout``, with the wait's own words when it has them (why no answer was accepted)."""
    message = error.message if error is not None else deadline_reached(prediction_id, deadline).message
    return make_event(EVENT_TIMEOUT, prediction_id, message)


def terminal_event(prediction: Prediction) -> PredictionEvent:
    """``success`` or ``failed`` for a terminal prediction."""
    if prediction.succeeded:
        return make_event(EVENT_SUCCESS, prediction.id, "completed", prediction)
    return make_event(EVENT_FAILED, prediction.id, prediction.error or "failed (no reason given)", prediction)


def event_prediction(prediction: Prediction) -> dict[str, Any]:
    """The prediction as stored in the event. Base64 outputs are left out: events are written to the
    metadata database, and an 8K image as text is tens of megabytes. The worker fetches them."""
    data = prediction.to_dict()
    outputs = prediction.outputs or []
    if any(not output.startswith(("http://", "https://")) for output in outputs):
        data["outputs"] = None
        data["outputs_omitted"] = True
    return data


def error_from_event(event: dict[str, Any], prediction_id: str | None = None) -> VibeDreamError:
    """The typed error an ``error``/``failed``/``timeout`` event stands for."""
    status = event.get("status")
    prediction_id = prediction_id or str(event.get("prediction_id"))
    message = event.get("message") or "no message"
    if status == EVENT_FAILED:
        return VibeDreamPredictionFailedError.of(prediction_id, message)
    if status == EVENT_TIMEOUT:
        return VibeDreamTimeoutError(message, prediction_id=prediction_id)
    klass = _ERROR_TYPES.get(str(event.get("error_type")), VibeDreamError)
    status_code = event.get("status_code")
    text = f"Waiting for VibeDream prediction {prediction_id} failed: {message}"
    common: dict[str, Any] = {
        "status_code": status_code if isinstance(status_code, int) else None,
        "prediction_id": prediction_id,
    }
    if issubclass(klass, errors.VibeDreamTransportError):
        return klass(text, request_sent=True, **common)
    return klass(text, **common)


def prediction_from_event(event: dict[str, Any], fetch: Callable[[str], Prediction]) -> Prediction:
    """The finished prediction a ``success`` event reports; any other event raises its typed error.

    ``fetch`` gets the prediction from the API when the event left its outputs out (base64).
    """
    if event.get("status") != EVENT_SUCCESS:
        raise error_from_event(event)
    prediction_id = str(event.get("prediction_id"))
    data = event.get("prediction") or {}
    if not data or data.get("outputs_omitted"):
        return fetch(prediction_id)
    # The trigger accepted only this prediction's answer; checked again here, where it is adopted.
    return check_answer_is_for(Prediction.from_dict(data), prediction_id)


def as_waiting_error(exc: BaseException) -> VibeDreamError:
    """Anything that is not already a typed error, as one (so a trigger still fires an event)."""
    if isinstance(exc, VibeDreamError):
        return exc
    return VibeDreamProtocolError(f"unexpected {type(exc).__name__} while waiting: {str(exc)[:300]}")


def log_unavailable(log: logging.Logger | Any, seconds: float, error: VibeDreamError) -> None:
    """The progress line of a wait held up by the API: says so, instead of silence."""
    if isinstance(error, errors.VibeDreamAnswerMismatchError):  # the API answers, but not for this job
        log.warning("%s; polling again until the deadline", error)
        return
    log.warning("VibeDream API unavailable for %.0fs (%s), retrying until the deadline", seconds, error)


class Throttled:
    """A report callable that passes at most one call every ``interval`` seconds (one line for a
    whole batch, not one per prediction)."""

    def __init__(self, report: Callable[[float, VibeDreamError], None], interval: float = 30.0) -> None:
        self._report = report
        self._interval = interval
        self._last: float | None = None

    def __call__(self, seconds: float, error: VibeDreamError) -> None:
        now = time.monotonic()
        if self._last is None or now - self._last >= self._interval:
            self._last = now
            self._report(seconds, error)
