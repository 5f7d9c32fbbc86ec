"""Crash-safe resume: a retry reconnects to the prediction stored in task_state_store."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_vibedream.client import Prediction
from airflow_vibedream.errors import VibeDreamNotFoundError
from airflow_vibedream.operators.resume import STATE_KEY
from airflow_vibedream.operators.vibedream import XCOM_PREDICTION_ID, VibeDreamUpscaleImageOperator
from tests.unit.test_operators import COMPLETED, PID, SUBMITTED, FakeTI

NEW_PID = "11111111-2222-3333-4444-555555555555"


class FakeStateStore:
    """The part of Airflow's TaskStateStoreAccessor the operator uses."""

    def __init__(self, value: Any = None) -> None:
        self.values: dict[str, Any] = {STATE_KEY: value} if value is not None else {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


def stored(prediction_id: str = PID, model_id: str = "image-upscaler") -> dict[str, Any]:
    return {"prediction_id": prediction_id, "cost_cents": 2, "model_id": model_id}


def operator(**kwargs: Any) -> VibeDreamUpscaleImageOperator:
    return VibeDreamUpscaleImageOperator(
        task_id="upscale",
        image="https://example.com/a.jpg",
        target_resolution="2k",
        output_format="png",
        deferrable=True,
        **kwargs,
    )


@pytest.fixture
def client() -> mock.MagicMock:
    with mock.patch("airflow_vibedream.hooks.vibedream.VibeDreamHook.get_conn") as get_conn:
        get_conn.return_value.submit.return_value = Prediction(id=NEW_PID, status="processing", cost_cents=2)
        yield get_conn.return_value


def run(task: VibeDreamUpscaleImageOperator, store: FakeStateStore) -> tuple[Any, FakeTI]:
    ti = FakeTI()
    try:
        return task.execute({"ti": ti, "task_state_store": store}), ti
    except TaskDeferred as deferred:
        return deferred, ti


def test_first_try_stores_the_prediction_before_deferring(client: mock.MagicMock) -> None:
    store = FakeStateStore()
    deferred, ti = run(operator(), store)
    assert isinstance(deferred, TaskDeferred)
    assert store.values[STATE_KEY] == stored(NEW_PID)
    assert ti.xcom[XCOM_PREDICTION_ID] == NEW_PID


def test_retry_reconnects_to_a_running_prediction(client: mock.MagicMock) -> None:
    client.get_prediction.return_value = SUBMITTED
    deferred, ti = run(operator(), FakeStateStore(stored()))
    assert isinstance(deferred, TaskDeferred)
    assert deferred.trigger.prediction_id == PID
    client.submit.assert_not_called()
    assert ti.xcom[XCOM_PREDICTION_ID] == PID


def test_retry_finishes_at_once_when_the_prediction_completed(client: mock.MagicMock) -> None:
    client.get_prediction.return_value = COMPLETED
    result, _ = run(operator(), FakeStateStore(stored()))
    assert result["id"] == PID and result["status"] == "completed" and result["cost_cents"] == 2
    client.submit.assert_not_called()


@pytest.mark.parametrize(
    "answer",
    [Prediction(id=PID, status="failed", error="flagged"), VibeDreamNotFoundError("gone", status_code=404)],
    ids=["failed", "not-found"],
)
def test_retry_submits_anew_when_the_stored_prediction_cannot_serve(
    client: mock.MagicMock, answer: Prediction | Exception
) -> None:
    if isinstance(answer, Exception):
        client.get_prediction.side_effect = answer
    else:
        client.get_prediction.return_value = answer
    store = FakeStateStore(stored())
    deferred, _ = run(operator(), store)
    client.submit.assert_called_once()
    assert deferred.trigger.prediction_id == NEW_PID
    assert store.values[STATE_KEY]["prediction_id"] == NEW_PID


def test_durable_false_ignores_the_store(client: mock.MagicMock) -> None:
    store = FakeStateStore(stored())
    run(operator(durable=False), store)
    client.get_prediction.assert_not_called()
    client.submit.assert_called_once()
    assert store.values[STATE_KEY]["prediction_id"] == PID  # untouched


def test_another_models_prediction_is_not_adopted(client: mock.MagicMock) -> None:
    run(operator(), FakeStateStore(stored(model_id="other-model")))
    client.get_prediction.assert_not_called()
    client.submit.assert_called_once()


def test_without_task_state_store_every_try_submits(
    client: mock.MagicMock, caplog: pytest.LogCaptureFixture
) -> None:
    ti = FakeTI()
    with pytest.raises(TaskDeferred):
        operator().execute({"ti": ti})
    client.submit.assert_called_once()
