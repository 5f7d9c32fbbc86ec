"""The poll window's rule on a fake clock: grows while polls wait and answers come back fast and
clean, halves on congestion, trims on latency growth, one cut per round trip, within its bounds."""

from __future__ import annotations

import pytest

from airflow_vibedream.waiting.window import PollWindow


def test_grows_by_one_per_clean_answer_only_while_polls_wait() -> None:
    window = PollWindow(512, start=32)
    for n in range(10):
        window.answered(0.1, now=n * 0.01, saturated=True)
    assert window.size == 42
    window.answered(0.1, now=1.0, saturated=False)
    assert window.size == 42  # nobody waited for a slot: more room would not help


def test_doubles_per_round_trip_while_saturated_and_stops_at_the_ceiling() -> None:
    window = PollWindow(100, start=32)
    now = 0.0
    for _ in range(32):  # one round trip's worth of answers
        window.answered(0.1, now, saturated=True)
    assert window.size == 64
    for _ in range(1000):
        window.answered(0.1, now, saturated=True)
    assert window.size == 100


def test_congestion_halves_once_per_round_trip_never_below_the_floor() -> None:
    window = PollWindow(512, start=256, floor=8)
    window.answered(0.1, now=0.0, saturated=False)
    window.failed(now=1.0)
    assert window.size == 128
    window.failed(now=1.05)  # answers to polls sent before the cut: no second cut
    assert window.size == 128
    window.failed(now=1.2)
    assert window.size == 64
    for n in range(20):
        window.failed(now=2.0 + n)
    assert window.size == 8


@pytest.mark.parametrize(
    ("baseline", "answer", "trimmed"),
    [
        (0.100, 0.150, False),  # within 2x: a far API is not a congested one
        (0.100, 0.250, True),  # 2.5x the fastest answer: the API queues our polls
        (0.001, 0.015, False),  # loopback jitter under the 20 ms slack
        (0.001, 0.050, True),
    ],
)
def test_latency_growth_trims_a_tenth(baseline: float, answer: float, trimmed: bool) -> None:
    window = PollWindow(512, start=100)
    window.answered(baseline, now=0.0, saturated=False)
    window.answered(answer, now=1.0, saturated=True)
    assert window.size == (90 if trimmed else 101)


def test_a_lower_ceiling_applies_at_once() -> None:
    window = PollWindow(512, start=300)
    window.ceiling = 64
    assert window.size == 64
