"""The outage gate's decisions, on a fake clock: when it opens, who probes, when it closes."""

from __future__ import annotations

import pytest

from airflow_vibedream.errors import VibeDreamRateLimitedError, VibeDreamServerError
from airflow_vibedream.waiting.gate_core import CLOSED, HALF_OPEN, OPEN, GateCore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def down(status: int = 503) -> VibeDreamServerError:
    return VibeDreamServerError(f"HTTP {status}", status_code=status)


def test_it_opens_after_the_threshold_of_failures_in_a_row(clock: Clock) -> None:
    gate = GateCore(failure_threshold=3, clock=clock)
    for _ in range(2):
        assert gate.try_enter() == (True, None)
        gate.failed(down(), None)
    assert gate.state == CLOSED
    gate.succeeded()  # an answer resets the run
    for _ in range(3):
        gate.failed(down(), None)
    assert gate.state == OPEN and gate.try_enter() == (False, None)
    assert gate.unavailable_for() == 0.0  # the clock has not moved


def test_one_probe_at_a_time_then_everyone_resumes(clock: Clock) -> None:
    gate = GateCore(failure_threshold=1, initial_probe_backoff=2.0, clock=clock)
    gate.failed(down(), None)
    assert gate.try_enter()[0] is False
    wait = gate.seconds_to_probe()
    assert wait is not None and 1.0 <= wait <= 2.0  # jittered, in [ceiling/2, ceiling]
    clock.now += 2.0
    allowed, probe = gate.try_enter()
    assert allowed and probe is not None and gate.state == HALF_OPEN
    assert gate.try_enter() == (False, None)  # a second poller waits for the probe's verdict
    assert gate.seconds_to_probe() is None
    assert gate.succeeded() is True and gate.state == CLOSED
    assert gate.try_enter() == (True, None)


def test_a_failed_probe_backs_off_longer_up_to_the_cap(clock: Clock) -> None:
    gate = GateCore(failure_threshold=1, initial_probe_backoff=1.0, max_probe_backoff=4.0, clock=clock)
    gate.failed(down(), None)
    waits = []
    for _ in range(5):
        clock.now += 100
        _, probe = gate.try_enter()
        gate.failed(down(), probe)
        waits.append(gate.seconds_to_probe())
    assert all(w is not None and w <= 4.0 for w in waits)
    assert waits[-1] is not None and waits[-1] >= 2.0  # at the cap: [cap/2, cap]
    assert gate.probes == 5 and gate.opened == 1
    assert gate.unavailable_for() == 500.0


def test_retry_after_is_honoured_by_the_probe(clock: Clock) -> None:
    gate = GateCore(failure_threshold=1, max_probe_backoff=10.0, clock=clock)
    gate.failed(VibeDreamRateLimitedError("429", status_code=429, retry_after=60.0), None)
    assert gate.seconds_to_probe() == 60.0


def test_a_cancelled_probe_hands_the_turn_to_the_next_poller(clock: Clock) -> None:
    gate = GateCore(failure_threshold=1, clock=clock)
    gate.failed(down(), None)
    clock.now += 60
    _, probe = gate.try_enter()
    assert gate.released(probe) is True and gate.state == OPEN
    allowed, second = gate.try_enter()
    assert allowed and second is not None and second is not probe
    assert gate.released(probe) is False  # a stale token changes nothing
