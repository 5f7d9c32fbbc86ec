"""The earliest time a trigger's event fires after its deferral (tasks/settle.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from airflow_vibedream.tasks.settle import (
    SCHEDULER_MARGIN_SECONDS,
    fire_not_before,
    settle,
    settle_seconds,
)


def test_by_default_the_supervisor_wake_up_interval_plus_a_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__VIBEDREAM__RESUME_SETTLE_SECONDS", raising=False)
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "7")
    assert settle_seconds() == 7 + SCHEDULER_MARGIN_SECONDS
    assert fire_not_before(now=1000.0) == 1000.0 + 7 + SCHEDULER_MARGIN_SECONDS


def test_configured_seconds_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__VIBEDREAM__RESUME_SETTLE_SECONDS", "0")
    assert settle_seconds() == 0.0
    assert fire_not_before(now=1000.0) == 1000.0


def test_settle_waits_until_the_time_and_not_for_a_past_one() -> None:
    not_before = time.time() + 0.3
    asyncio.run(settle(not_before))
    assert time.time() >= not_before
    for nothing_to_wait_for in (None, time.time() - 10):
        started = time.monotonic()
        asyncio.run(settle(nothing_to_wait_for))
        assert time.monotonic() - started < 0.2  # returns at once
