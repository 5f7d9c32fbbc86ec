"""When to poll a job, learned from the jobs already seen finishing in this process.

The API gives no estimate of a job's duration, but every job a process waits for ends with its
``createdAt`` and ``completedAt``. :class:`DurationModel` keeps the most recent durations per kind of
job (model and resolution), and :class:`LearnedSchedule` turns them into the next poll's delay:

- **sparse while the job is younger than almost every job seen finishing**: the next poll is at the
  age by which at most ``skip_share`` of the jobs still running (as the sample says) finish;
- **dense where they finish**: the caller's interval (the API's 1-2 s), so a job that finishes there
  is seen within one interval;
- **by age beyond everything seen**: ``age_fraction`` of the job's age, capped.

With fewer than ``min_samples`` durations of a kind it falls back to the fixed schedule (dense, then by
age), so the first jobs of a new kind are watched as closely as before. Any delay is capped at
``max_sparse`` seconds, so a kind whose jobs suddenly get faster is relearned within that bound.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

#: Durations kept per kind of job (the most recent).
SAMPLES_KEPT = 1000


@dataclass
class _Durations:
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))
    ordered: list[float] = field(default_factory=list)
    stale: bool = False

    def sorted(self) -> list[float]:
        if self.stale:
            self.ordered = sorted(self.recent)
            self.stale = False
        return self.ordered


class DurationModel:
    """Recent job durations per kind (a process-wide memory: a triggerer learns from every trigger)."""

    def __init__(self) -> None:
        self._kinds: dict[str, _Durations] = {}

    def observe(self, kind: str, seconds: float) -> None:
        if not (0.0 <= seconds < 86_400.0):  # a clock skew or a day-long job says nothing useful
            return
        durations = self._kinds.get(kind)
        if durations is None:
            durations = self._kinds[kind] = _Durations()
        durations.recent.append(seconds)
        durations.stale = True  # re-sorted lazily, at most once per poll decision that needs it

    def samples(self, kind: str) -> list[float]:
        """The kind's durations, ascending (empty if none)."""
        durations = self._kinds.get(kind)
        return durations.sorted() if durations is not None else []

    def forget(self) -> None:
        self._kinds.clear()


#: The process's model: every trigger of every loop learns into it and reads from it.
DURATIONS = DurationModel()


@dataclass(frozen=True)
class LearnedSchedule:
    """The delay before a job's next poll.

    :param min_samples: durations of a kind needed before they are trusted.
    :param skip_share: the share of the still-running jobs that may finish inside one sparse delay
        (and be seen up to that delay late).
    :param max_sparse: the longest delay, seconds.
    :param age_fraction: past every duration seen, the delay as a share of the job's age.
    :param max_by_age: the longest delay by age, seconds.
    """

    min_samples: int = 20
    skip_share: float = 0.005
    max_sparse: float = 30.0
    age_fraction: float = 0.03
    max_by_age: float = 10.0

    def fallback(self, interval: float, age: float) -> float:
        """What the provider did before it learned: dense, then a share of the age."""
        return min(max(interval, self.max_by_age), max(interval, age * self.age_fraction))

    def next_delay(self, samples: list[float], interval: float, age: float) -> float:
        """Seconds until the next poll of a job ``age`` seconds old, polled every ``interval``
        seconds where jobs finish; ``samples`` are its kind's durations, ascending."""
        if len(samples) < self.min_samples:
            return self.fallback(interval, age)
        first_later = bisect.bisect_right(samples, age)
        running = len(samples) - first_later
        if running == 0:  # older than every job seen: by age
            return self.fallback(interval, age)
        # The age by which at most skip_share of the jobs still running have finished.
        target = samples[first_later + int(self.skip_share * running)]
        return min(self.max_sparse, max(interval, target - age))
