"""Fakes shared by the tests: the parts of Airflow's task instance and task_state_store that the
operators use, and sample predictions. Real Airflow runs in tests/e2e; these keep unit tests I/O-free."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from airflow_vibedream.client import Prediction

PID = "550e8400-e29b-41d4-a716-446655440000"
NEW_PID = "11111111-2222-3333-4444-555555555555"
SUBMITTED = Prediction(id=PID, status="processing", cost_cents=2, created_at="2025-01-15T12:00:00.000Z")
COMPLETED = Prediction(
    id=PID,
    status="completed",
    model_id="image-upscaler",
    outputs=["https://assets.vibedream.test/o.png"],
    created_at="2025-01-15T12:00:00.000Z",
    completed_at="2025-01-15T12:00:30.000Z",
)


class FakeTI:
    """The task instance attributes and XCom calls the operators use."""

    task_id = "upscale"
    dag_id = "dag"
    run_id = "manual__1"
    map_index = -1

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def xcom_pull(self, task_ids: str, key: str, map_indexes: int) -> Any:
        return self.xcom.get(key)


class FakeStateStore:
    """The part of Airflow's TaskStateStoreAccessor the operators use."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values: dict[str, Any] = dict(values or {})
        self.writes: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value
        self.writes.append(key)

    def delete(self, key: str) -> None:
        self.values.pop(key, None)
        self.writes.append(f"-{key}")


def recorded(signer: Any, record: dict[str, Any], ti: Any = None) -> dict[str, Any]:
    """``record`` as the task instance ``ti`` (a :class:`FakeTI` by default) writes it to its store:
    signed, and bound to that task instance."""
    from airflow_vibedream.jobs.submissions import SubmissionRecord, SubmissionStore

    backend = FakeStateStore()
    parsed = SubmissionRecord.from_json(record)
    assert parsed is not None
    SubmissionStore({"ti": ti or FakeTI(), "task_state_store": backend}, signer).set("k", parsed)  # type: ignore[typeddict-item]
    return dict(backend.values["k"])


def until(condition: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    """Wait for an observable state (a count, a flag) that has no event to wait on; a bounded poll,
    so a state that never comes is a clear failure, not a hang."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return value


async def async_until(condition: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    """:func:`until` on an event loop: the loop keeps running between checks."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return value
