"""When to poll: the sleep before the next poll, the interval by a job's age, and status changes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.constants import DEFAULT_POLL_INTERVAL


def next_sleep(poll_interval: float, deadline: float | None) -> float:
    """Sleep the poll interval, but wake at the deadline rather than overshoot it."""
    if deadline is None:
        return poll_interval
    return max(0.0, min(poll_interval, deadline - time.time()))


@dataclass(frozen=True)
class PollSchedule:
    """How often to poll a prediction of a given age.

    The API recommends every 1-2 s. A job that has already run a while is watched less closely:
    the interval grows to ``age_fraction`` of the job's age, up to ``max_interval``. So a short job
    is seen finishing within ~``interval``, and a thousand long ones do not flood the API.

    :param interval: the interval for young predictions, seconds.
    :param max_interval: the longest interval, seconds.
    :param age_fraction: the interval as a fraction of the prediction's age, once that is longer.
    """

    interval: float = DEFAULT_POLL_INTERVAL
    max_interval: float = 10.0
    age_fraction: float = 0.03

    def next_interval(self, age: float) -> float:
        return min(max(self.interval, self.max_interval), max(self.interval, age * self.age_fraction))


def elapsed_since(created_at: str | None, fallback_start: float) -> float:
    """Seconds since the prediction was created (by the API's clock, so a restarted trigger still
    reports the true age), or since ``fallback_start`` (monotonic) when the API gave no time."""
    if created_at:
        try:
            created = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
            return max(0.0, time.time() - created.timestamp())
        except ValueError:
            pass
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
