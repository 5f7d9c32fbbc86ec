"""VibeDreamPredictionSensor against the emulator: poke mode, deferral, and every outcome."""

from __future__ import annotations

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, TaskDeferred

from airflow_vibedream.client import ClientSettings, UpscaleRequest, VibeDreamClient
from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.errors import VibeDreamError, VibeDreamPredictionFailedError, VibeDreamTimeoutError
from airflow_vibedream.sensors.vibedream import VibeDreamPredictionSensor
from airflow_vibedream.triggers.vibedream import VibeDreamPredictionTrigger
from tests.conftest import TEST_KEY


def submit(emulator: EmulatorServer, image: str | None = None) -> str:
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=emulator.base_url))
    return client.upscale(UpscaleRequest(image or f"{emulator.base_url}/samples/64x48.png", "2k", "jpeg")).id


def test_poke_mode_waits_and_returns_the_result(slow_vibedream_conn: EmulatorServer) -> None:
    prediction_id = submit(slow_vibedream_conn)
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
    with pytest.raises(AirflowFailException, match="Failed to fetch the input image") as info:
        sensor.execute({})
    assert isinstance(info.value.__cause__, VibeDreamPredictionFailedError)  # no retry: it failed for good


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


def test_a_401_seen_by_a_poke_fails_without_retry(vibedream_conn: EmulatorServer) -> None:
    prediction_id = submit(vibedream_conn)
    vibedream_conn.state.faults.replace([{"route": "poll", "kind": "status", "status": 401}])
    sensor = VibeDreamPredictionSensor(
        task_id="wait", prediction_id=prediction_id, poke_interval=0.1, timeout=30
    )
    with pytest.raises(AirflowFailException, match="HTTP 401"):
        sensor.execute({})


@pytest.mark.parametrize(
    ("status", "error_type", "error"),
    [
        ("failed", None, AirflowFailException),
        ("error", "VibeDreamAuthError", AirflowFailException),
        ("timeout", None, VibeDreamTimeoutError),
        ("error", None, VibeDreamError),
    ],
)
def test_execute_complete_decides_by_the_one_rule(
    status: str, error_type: str | None, error: type[Exception]
) -> None:
    sensor = VibeDreamPredictionSensor(task_id="wait", prediction_id="p-1", deferrable=True)
    event = {
        "status": status,
        "prediction_id": "p-1",
        "prediction": None,
        "message": "m",
        "error_type": error_type,
    }
    with pytest.raises(error) as info:
        sensor.execute_complete({}, event)
    assert type(info.value) is error


@pytest.mark.parametrize(("field", "value"), [("poke_interval", float("nan")), ("timeout", float("inf"))])
def test_bad_sensor_settings_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be a finite, positive number"):
        VibeDreamPredictionSensor(task_id="wait", prediction_id="p-1", **{field: value})


OTHER_ID = "00000000-0000-4000-8000-000000000000"


def test_a_poke_answered_for_another_prediction_is_never_done_and_times_out(
    vibedream_conn: EmulatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from airflow.providers.common.compat.sdk import AirflowSensorTimeout

    prediction_id = submit(vibedream_conn)
    vibedream_conn.state.faults.replace([{"route": "poll", "kind": "other_answer"}])
    sensor = VibeDreamPredictionSensor(
        task_id="wait", prediction_id=prediction_id, poke_interval=0.1, timeout=1
    )
    with pytest.raises(AirflowSensorTimeout):
        sensor.execute({})
    said = [line for line in capsys.readouterr().out.splitlines() if "not a result" in line]
    assert len(said) == 1 and OTHER_ID in said[0] and prediction_id in said[0]  # said once


async def test_the_deferred_sensor_answered_for_another_prediction_times_out_saying_so(
    vibedream_conn: EmulatorServer,
) -> None:
    prediction_id = submit(vibedream_conn)
    vibedream_conn.state.faults.replace([{"route": "poll", "kind": "other_answer"}])
    sensor = VibeDreamPredictionSensor(
        task_id="wait", prediction_id=prediction_id, deferrable=True, poke_interval=0.1, timeout=1
    )
    with pytest.raises(TaskDeferred) as info:
        sensor.execute({})
    [event] = [e.payload async for e in info.value.trigger.run()]
    assert event["status"] == "timeout" and OTHER_ID in event["message"]
    with pytest.raises(VibeDreamTimeoutError, match=OTHER_ID):
        sensor.execute_complete({}, event)


def test_a_success_event_whose_prediction_is_another_is_refused() -> None:
    sensor = VibeDreamPredictionSensor(task_id="wait", prediction_id="p-1", deferrable=True)
    event = {
        "status": "success",
        "prediction_id": "p-1",
        "prediction": {"id": OTHER_ID, "status": "completed", "outputs": ["x"]},
        "message": "completed",
    }
    with pytest.raises(VibeDreamError, match="another prediction"):
        sensor.execute_complete({}, event)
