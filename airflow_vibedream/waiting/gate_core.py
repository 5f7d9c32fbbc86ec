"""The outage gate's decisions (a circuit breaker shared by every poller of one API), with no waiting
and no I/O: :mod:`airflow_vibedream.waiting.gate` wraps it for an event loop and for threads.

- *closed*: polls go out. ``failure_threshold`` transient failures in a row (from any poller) open it;
- *open*: nobody polls. After a capped, jittered backoff (never sooner than a ``Retry-After``) the
  first poller to ask becomes the one *probe* (half-open); everyone else keeps waiting;
- the probe succeeds: closed again; the probe fails: open again, with a longer backoff.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


@dataclass
class GateCore:
    """The gate's decisions, with no waiting and an injectable clock (so they can be tested alone).

    :param failure_threshold: transient failures in a row that open the gate.
    :param initial_probe_backoff: the first wait before a probe, seconds.
    :param max_probe_backoff: the longest wait between probes, seconds (a ``Retry-After`` may ask
        for longer; it is honoured).
    :param clock: monotonic seconds.
    """

    failure_threshold: int = 5
    initial_probe_backoff: float = 1.0
    max_probe_backoff: float = 10.0
    clock: Callable[[], float] = time.monotonic
    state: str = CLOSED
    consecutive_failures: int = 0
    #: When the current run of failures began (None while the API answers).
    failing_since: float | None = None
    next_probe_at: float = 0.0
    probes_failed: int = 0
    #: Counters, for tests and benchmarks.
    opened: int = 0
    probes: int = 0
    _probe_token: object | None = field(default=None, repr=False)

    def try_enter(self) -> tuple[bool, object | None]:
        """(may poll now, probe token or None). A False means: wait for a change or the next probe."""
        if self.state == CLOSED:
            return True, None
        if self.state == OPEN and self.clock() >= self.next_probe_at:
            self.state = HALF_OPEN
            self.probes += 1
            self._probe_token = object()
            return True, self._probe_token
        return False, None

    def seconds_to_probe(self) -> float | None:
        """How long until a probe may go (None while a probe is out: wait for its outcome)."""
        if self.state == OPEN:
            return max(0.0, self.next_probe_at - self.clock())
        return None

    def succeeded(self) -> bool:
        """A poll got an answer. Returns True when this closed an open gate (waiters resume)."""
        reopened = self.state != CLOSED
        self.state = CLOSED
        self.consecutive_failures = 0
        self.failing_since = None
        self.probes_failed = 0
        self._probe_token = None
        return reopened

    def failed(self, exc: BaseException, probe: object | None) -> bool:
        """A poll failed transiently. Returns True when the gate (re)opened (waiters re-plan)."""
        now = self.clock()
        self.consecutive_failures += 1
        if self.failing_since is None:
            self.failing_since = now
        if probe is not None and probe is self._probe_token:
            self.probes_failed += 1
            self._open(now, exc)
            return True
        if self.state == CLOSED and self.consecutive_failures >= self.failure_threshold:
            self.opened += 1
            self._open(now, exc)
            return True
        return False

    def released(self, probe: object | None) -> bool:
        """A probe ended with no verdict (cancelled, permanent error): let another poller probe now."""
        if probe is not None and probe is self._probe_token and self.state == HALF_OPEN:
            self.state = OPEN
            self.next_probe_at = self.clock()
            self._probe_token = None
            return True
        return False

    def unavailable_for(self) -> float:
        """Seconds since the current run of failures began (0 while the API answers)."""
        return 0.0 if self.failing_since is None else self.clock() - self.failing_since

    def _open(self, now: float, exc: BaseException) -> None:
        self.state = OPEN
        self._probe_token = None
        ceiling = min(
            self.max_probe_backoff, self.initial_probe_backoff * 2 ** max(0, self.probes_failed - 1)
        )
        wait = random.uniform(ceiling / 2, ceiling)
        server_asked = getattr(exc, "retry_after", None)
        if server_asked is not None:
            wait = max(wait, float(server_asked))
        self.next_probe_at = now + wait
