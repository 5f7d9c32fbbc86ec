"""How many polls may be in flight at once: a window that follows the API, not a constant.

A fixed number of polls in flight caps the poll rate at ``polls / round trip``: 64 polls over an API
100 ms away make 640 polls a second, while 2,000 jobs polled every ~1.8 s need ~1,100. The window
therefore grows while polls are waiting for a slot and the API answers fast and clean, and shrinks
when it answers with errors (429, 5xx, a dropped connection: the poll took the gate's back-off) or
slower than it used to (it is queueing our polls). The same rule as TCP's congestion window, on
latency like TCP Vegas: growth by one per clean answer while saturated doubles the window per round
trip; a loss halves it; latency growth trims it by a tenth, at most once per round trip.

No I/O and no clock of its own: the scheduler passes each poll's outcome and the time, so the rule
is tested on a table of cases.
"""

from __future__ import annotations

#: The fewest polls in flight: enough for a slow API's answers to keep due polls moving.
FLOOR = 8
#: Where a new scheduler starts (64 was the fixed pool before; half of it, grown on demand).
START = 32
#: The most polls in flight unless the connection's ``max_polls_in_flight`` says otherwise.
CEILING = 512
#: An answer slower than ``TOLERANCE`` x the fastest recent one, plus ``SLACK`` seconds, says the API
#: (or the way to it) is queueing: loopback round trips of a millisecond jitter by more than 2x.
TOLERANCE = 2.0
SLACK = 0.020


class PollWindow:
    """The number of polls a scheduler may have in flight.

    :param ceiling: never more than this (the connection's ``max_polls_in_flight``).
    :param floor: never fewer than this.
    :param start: the window of a new scheduler.
    """

    __slots__ = ("_baseline", "_calm_after", "_size", "ceiling", "floor")

    def __init__(self, ceiling: int = CEILING, *, floor: int = FLOOR, start: int = START) -> None:
        self.ceiling = max(1, ceiling)
        self.floor = min(floor, self.ceiling)
        self._size = float(min(max(start, self.floor), self.ceiling))
        self._baseline: float | None = None  # the fastest recent round trip
        self._calm_after = 0.0  # no second cut before this time (one cut per round trip)

    @property
    def size(self) -> int:
        """Polls that may be in flight now."""
        return min(self.ceiling, int(self._size))

    @property
    def baseline(self) -> float | None:
        """The fastest recent round trip, seconds (None before the first answer)."""
        return self._baseline

    def answered(self, seconds: float, now: float, *, saturated: bool) -> None:
        """A poll came back clean after ``seconds``. ``saturated``: polls were due and waiting for a
        slot when it was sent, so more room would have sent them sooner."""
        baseline = self._baseline
        if baseline is None or seconds < baseline:
            self._baseline = baseline = seconds
        else:
            # Drifts up slowly, so a route that got longer for good becomes the new normal.
            self._baseline = baseline = baseline + (seconds - baseline) * 0.001
        if seconds > baseline * TOLERANCE + SLACK:
            self._cut(0.9, seconds, now)
        elif saturated and self._size < self.ceiling:
            self._size = min(float(self.ceiling), self._size + 1.0)

    def failed(self, now: float) -> None:
        """A poll met an answer that says the API is overloaded or unreachable (429, 5xx, network)."""
        self._cut(0.5, 0.0, now)

    def _cut(self, factor: float, seconds: float, now: float) -> None:
        if now < self._calm_after:
            return  # the polls sent before the last cut are still answering: one cut per round trip
        self._size = max(float(self.floor), self._size * factor)
        # Polls sent before this cut answer within about one round trip: they say nothing new.
        self._calm_after = now + max(seconds, self._baseline or 0.0)
