"""Status changes of a waited-for prediction, for the task's log (with the job's true age)."""

from __future__ import annotations

import time
from collections.abc import Callable

from airflow_vibedream.client.models import Prediction, iso_seconds


def elapsed_since(created_at: str | None, fallback_start: float) -> float:
    """Seconds since the prediction was created (by the API's clock, so a restarted trigger still
    reports the true age), or since ``fallback_start`` (monotonic) when the API gave no time."""
    created = iso_seconds(created_at)
    if created is not None:
        return max(0.0, time.time() - created)
    return time.monotonic() - fallback_start


class StatusTracker:
    """Calls ``on_change(prediction, elapsed_seconds)`` when the status differs from the last one seen."""

    def __init__(self, on_change: Callable[[Prediction, float], None] | None) -> None:
        self._on_change = on_change
        self._started = time.monotonic()
        self._last_status: str | None = None

    def observe(self, prediction: Prediction) -> bool:
        changed = prediction.status != self._last_status
        self._last_status = prediction.status
        if changed and self._on_change is not None:
            self._on_change(prediction, elapsed_since(prediction.created_at, self._started))
        return changed
