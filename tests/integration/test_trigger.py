"""VibeDreamPredictionTrigger: serialization and every event status, against the emulator over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from airflow_vibedream.client import ClientSettings, UpscaleRequest, VibeDreamClient
from airflow_vibedream.emulator import EmulatorConfig, EmulatorServer
from airflow_vibedream.triggers.vibedream import VibeDreamPredictionTrigger
from airflow_vibedream.waiting.blocking import wait_for_prediction
from tests.conftest import TEST_KEY, connection_json


def submit(emulator: EmulatorServer, image: str | None = None) -> str:
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=emulator.base_url))
    request = UpscaleRequest(image or f"{emulator.base_url}/samples/64x48.png", "2k", "jpeg")
    return client.upscale(request).id


async def events_of(trigger: VibeDreamPredictionTrigger) -> list[dict[str, Any]]:
    return [event.payload async for event in trigger.run()]


def test_serialize_round_trip_carries_no_secret() -> None:
    trigger = VibeDreamPredictionTrigger("pid-1", "my_conn", poll_interval=1.5, end_time=1_900_000_000.0)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_vibedream.triggers.vibedream.VibeDreamPredictionTrigger"
    assert kwargs == {
        "prediction_id": "pid-1",
        "vibedream_conn_id": "my_conn",
        "poll_interval": 1.5,
        "end_time": 1_900_000_000.0,
        "duration_kind": None,
        "created_at": None,
        "fire_not_before": None,
        "model_id": None,
        "large_answers": True,
    }
    assert VibeDreamPredictionTrigger(**kwargs).serialize() == (classpath, kwargs)


async def test_success_event(vibedream_conn: EmulatorServer) -> None:
    prediction_id = submit(vibedream_conn)
    trigger = VibeDreamPredictionTrigger(prediction_id, poll_interval=0.1, end_time=time.time() + 30)
    [event] = await events_of(trigger)
    assert event["status"] == "success" and event["prediction_id"] == prediction_id
    assert event["prediction"]["status"] == "completed"
    assert event["prediction"]["outputs"][0].startswith(vibedream_conn.base_url)
    assert TEST_KEY not in json.dumps(event)


async def test_the_event_waits_for_the_deferral_to_settle(vibedream_conn: EmulatorServer) -> None:
    # A job already over when the trigger starts: its event is still held until fire_not_before, so
    # Airflow has read the deferring process's exit before the task resumes (tasks/settle.py).
    prediction_id = submit(vibedream_conn)
    wait_for_prediction(
        VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=vibedream_conn.base_url)),
        prediction_id,
        poll_interval=0.1,
        deadline=time.time() + 30,
    )
    not_before = time.time() + 1.5
    trigger = VibeDreamPredictionTrigger(prediction_id, poll_interval=0.1, fire_not_before=not_before)
    [event] = await events_of(trigger)
    assert event["status"] == "success"
    assert time.time() >= not_before


async def test_failed_event_carries_the_api_error(vibedream_conn: EmulatorServer) -> None:
    prediction_id = submit(vibedream_conn, image="http://127.0.0.1:9/nothing.png")
    [event] = await events_of(VibeDreamPredictionTrigger(prediction_id, poll_interval=0.1))
    assert event["status"] == "failed"
    assert "Failed to fetch the input image" in event["message"]
    assert event["prediction"]["error"] == event["message"]


async def test_timeout_event_at_the_wall_clock_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    with EmulatorServer(EmulatorConfig(api_key=TEST_KEY, processing_seconds=60)) as slow:
        monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(slow.base_url))
        prediction_id = submit(slow)
        # A poll interval of 10 minutes and a deadline in half a second: the event comes at the
        # deadline, or the generous bound below fails the test (no tight wall-clock assert).
        trigger = VibeDreamPredictionTrigger(prediction_id, poll_interval=600, end_time=time.time() + 0.5)
        [event] = await asyncio.wait_for(events_of(trigger), timeout=60)
    assert event["status"] == "timeout" and event["prediction"] is None
    assert prediction_id in event["message"]


async def test_error_event_on_permanent_api_error(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(emulator.base_url, api_key="wrong-key")
    )
    [event] = await events_of(VibeDreamPredictionTrigger("any-id", poll_interval=0.1))
    assert event["status"] == "error"
    assert "401" in event["message"] and "wrong-key" not in event["message"]


async def test_error_event_for_unknown_prediction(vibedream_conn: EmulatorServer) -> None:
    [event] = await events_of(VibeDreamPredictionTrigger("no-such-prediction", poll_interval=0.1))
    assert event["status"] == "error" and "404" in event["message"]


async def test_base64_outputs_stay_out_of_the_event(vibedream_conn: EmulatorServer) -> None:
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=vibedream_conn.base_url))
    request = UpscaleRequest(
        f"{vibedream_conn.base_url}/samples/64x48.png", "2k", "png", enable_base64_output=True
    )
    prediction_id = client.upscale(request).id
    [event] = await events_of(VibeDreamPredictionTrigger(prediction_id, poll_interval=0.1))
    assert event["status"] == "success"
    assert event["prediction"]["outputs"] is None and event["prediction"]["outputs_omitted"] is True
    assert len(json.dumps(event)) < 2000


async def test_poll_uses_one_client_for_all_polls(
    slow_vibedream_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from httpx_aiohttp import AiohttpTransport

    created: list[AiohttpTransport] = []
    original = AiohttpTransport.__init__

    def counting_init(self: AiohttpTransport, *args: Any, **kwargs: Any) -> None:
        created.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(AiohttpTransport, "__init__", counting_init)
    prediction_id = submit(slow_vibedream_conn)
    [event] = await events_of(VibeDreamPredictionTrigger(prediction_id, poll_interval=0.05))
    assert event["status"] == "success"
    # submit + the emulator fetching its own sample + at least two polls ...
    assert slow_vibedream_conn.state.counters["requests"] >= 4
    assert len(created) == 1  # ... through one client (one connection pool)


async def test_a_401_while_waiting_fires_an_error_event_that_names_the_auth_error(
    vibedream_conn: EmulatorServer,
) -> None:
    prediction_id = submit(vibedream_conn)
    vibedream_conn.state.faults.replace([{"route": "poll", "kind": "status", "status": 401}])
    [event] = await events_of(VibeDreamPredictionTrigger(prediction_id, poll_interval=0.1))
    assert (event["status"], event["error_type"], event["status_code"]) == (
        "error",
        "VibeDreamAuthError",
        401,
    )
    assert TEST_KEY not in json.dumps(event)


async def test_a_401_while_waiting_for_a_batch_names_the_auth_error(vibedream_conn: EmulatorServer) -> None:
    from airflow_vibedream.triggers.vibedream import VibeDreamBatchTrigger

    ids = [submit(vibedream_conn) for _ in range(2)]
    vibedream_conn.state.faults.replace([{"route": "poll", "kind": "status", "status": 401}])
    [event] = [e.payload async for e in VibeDreamBatchTrigger(ids, poll_interval=0.1).run()]
    assert (event["status"], event["error_type"], event["status_code"]) == (
        "error",
        "VibeDreamAuthError",
        401,
    )


async def test_each_trigger_logs_only_its_own_predictions(vibedream_conn: EmulatorServer) -> None:
    """Two triggers in one triggerer share one poll scheduler; Airflow files a trigger's lines by the
    context it runs in (structlog context variables bound per trigger). Every line about a prediction
    must land under the trigger that waits for it, never under the one that started the pollers."""
    import structlog
    from structlog.contextvars import bind_contextvars, merge_contextvars
    from structlog.testing import LogCapture

    from airflow_vibedream.hooks.shared import aclose_shared_async_clients

    pids = [submit(vibedream_conn) for _ in range(3)]
    captured = LogCapture()
    before = structlog.get_config()
    structlog.configure(processors=[merge_contextvars, captured], cache_logger_on_first_use=False)

    async def trigger_of(trigger_id: int, pid: str) -> list[dict[str, Any]]:
        bind_contextvars(trigger_id=trigger_id)  # as the triggerer's run_trigger does
        await asyncio.sleep(0.05 * trigger_id)  # the first trigger starts the scheduler and pollers
        return await events_of(VibeDreamPredictionTrigger(pid, poll_interval=0.1, end_time=time.time() + 30))

    try:
        runs = [asyncio.create_task(trigger_of(n, pid)) for n, pid in enumerate(pids, start=1)]
        events = await asyncio.gather(*runs)
    finally:
        structlog.configure(**before)
        await aclose_shared_async_clients()
    assert [e[0]["status"] for e in events] == ["success"] * 3
    lines = 0
    for entry in captured.entries:
        text = str(entry["event"]) % tuple(entry.get("positional_args", ()))
        for n, pid in enumerate(pids, start=1):
            if pid in text:
                lines += 1
                assert entry.get("trigger_id") == n, (text, entry.get("trigger_id"))
    assert lines >= 3  # each trigger said its prediction completed, under its own name
