"""VibeDreamPredictionSensor against the emulator: poke mode, deferral, and every outcome."""

from __future__ import annotations

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_vibedream.client import ClientSettings, UpscaleRequest, VibeDreamClient
from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.errors import VibeDreamError, VibeDreamPredictionFailedError, VibeDreamTimeoutError
from airflow_vibedream.sensors.vibedream import VibeDreamPredictionSensor
from airflow_vibedream.triggers.vibedream import VibeDreamPredictionTrigger
from tests.conftest import TEST_KEY


def submit(emulator: EmulatorServer, image: str | None = None) -> str:
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=emulator.base_url))
    return client.upscale(UpscaleRequest(image or f"{emulator.base_url}/samples/64x48.png", "2k", "jpeg")).id


def test_poke_mode_waits_and_returns_the_result(vibedream_conn: EmulatorServer) -> None:
    prediction_id = submit(vibedream_conn)
    sensor = VibeDreamPredictionSensor(
        task_id="wait", prediction_id=prediction_id, poke_interval=0.1, timeout=30
    )
    assert not sensor.poke({}).is_done  # still processing
    result = sensor.execute({})
    assert result["id"] == prediction_id and result["status"] == "completed"


def test_poke_raises_when_the_prediction_failed(vibedream_conn: EmulatorServer) -> None:
    prediction_id = submit(vibedream_conn, image="http://127.0.0.1:9/none.png")
    sensor = VibeDreamPredictionSensor(
        task_id="wait", prediction_id=prediction_id, poke_interval=0.1, timeout=30
    )
    with pytest.raises(VibeDreamPredictionFailedError, match="Failed to fetch the input image"):
        sensor.execute({})


async def test_deferrable_sensor_defers_and_completes_from_the_event(vibedream_conn: EmulatorServer) -> None:
    prediction_id = submit(vibedream_conn)
    sensor = VibeDreamPredictionSensor(
        task_id="wait", prediction_id=prediction_id, deferrable=True, poke_interval=0.1, timeout=60
    )
    with pytest.raises(TaskDeferred) as info:
        sensor.execute({})
    trigger = info.value.trigger
    assert isinstance(trigger, VibeDreamPredictionTrigger) and trigger.prediction_id == prediction_id
    [event] = [e.payload async for e in trigger.run()]
    assert sensor.execute_complete({}, event)["status"] == "completed"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("failed", VibeDreamPredictionFailedError),
        ("timeout", VibeDreamTimeoutError),
        ("error", VibeDreamError),
    ],
)
def test_execute_complete_raises_on_anything_but_success(status: str, error: type[Exception]) -> None:
    sensor = VibeDreamPredictionSensor(task_id="wait", prediction_id="p-1", deferrable=True)
    with pytest.raises(error):
        sensor.execute_complete(
            {}, {"status": status, "prediction_id": "p-1", "prediction": None, "message": "m"}
        )
