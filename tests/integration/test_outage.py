"""Waiting rides out API outages until the deadline, through one gate per event loop (and per
worker process), against the emulator's outage window over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_vibedream.client import ClientSettings, UpscaleRequest, VibeDreamClient
from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.hooks.shared import aclose_shared_async_clients
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator
from airflow_vibedream.triggers.vibedream import VibeDreamBatchTrigger, VibeDreamPredictionTrigger
from tests.conftest import TEST_KEY, connection_json
from tests.helpers import FakeTI, until


def submit(emulator: EmulatorServer) -> str:
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=emulator.base_url))
    return client.upscale(UpscaleRequest(f"{emulator.base_url}/samples/64x48.png", "2k", "jpeg")).id


def outage(emulator: EmulatorServer, seconds: float, **extra: Any) -> None:
    rule = {"route": "poll", "kind": "outage", "status": 503, "seconds": seconds, **extra}
    httpx.post(f"{emulator.base_url}/_emulator/faults", json={"rules": [rule]}).raise_for_status()


def polls_refused(emulator: EmulatorServer) -> int:
    [rule] = httpx.get(f"{emulator.base_url}/_emulator/faults").json()["rules"]
    return int(rule["fired"])


async def fire_all(triggers: list[Any]) -> list[dict[str, Any]]:
    async def one(trigger: Any) -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    try:
        return list(await asyncio.gather(*(one(t) for t in triggers)))
    finally:
        await aclose_shared_async_clients()


@pytest.fixture
def one_retry(vibedream_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """A retry budget of 1 per call: without the patient path the second failure ends the wait."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(vibedream_conn.base_url, max_retries=1)
    )
    return vibedream_conn


def test_fifty_triggers_ride_out_an_outage_longer_than_their_retry_budget(one_retry: EmulatorServer) -> None:
    vibedream_conn = one_retry
    ids = [submit(vibedream_conn) for _ in range(50)]
    # The jobs finish before the outage (~0.3 s): only the waiting is at stake.
    until(
        lambda: httpx.get(f"{vibedream_conn.base_url}/_emulator/stats").json()["processing"] == 0,
        what="the 50 jobs to finish",
    )
    outage(vibedream_conn, 6.0)
    triggers = [VibeDreamPredictionTrigger(pid, poll_interval=0.5, end_time=time.time() + 60) for pid in ids]
    events = asyncio.run(fire_all(triggers))
    assert [event["status"] for event in events] == ["success"] * 50
    # One retry used to end every wait at the second 503; here each trigger waited out 6 s of 503s,
    # and the shared gate kept the API's load during the outage below one poll per trigger.
    assert 5 <= polls_refused(vibedream_conn) < 50


def test_a_deadline_during_an_outage_is_a_timeout_event_not_an_error(vibedream_conn: EmulatorServer) -> None:
    prediction_id = submit(vibedream_conn)
    outage(vibedream_conn, 600.0)
    [event] = asyncio.run(
        asyncio.wait_for(
            fire_all(
                [VibeDreamPredictionTrigger(prediction_id, poll_interval=0.2, end_time=time.time() + 2)]
            ),
            timeout=60,
        )
    )
    assert event["status"] == "timeout" and prediction_id in event["message"]


def test_retry_after_is_never_obeyed_past_the_deadline(vibedream_conn: EmulatorServer) -> None:
    prediction_id = submit(vibedream_conn)
    outage(vibedream_conn, 600.0, retry_after=3600)
    trigger = VibeDreamPredictionTrigger(prediction_id, poll_interval=0.2, end_time=time.time() + 2)
    [event] = asyncio.run(asyncio.wait_for(fire_all([trigger]), timeout=60))
    assert event["status"] == "timeout"


def test_a_batch_trigger_rides_out_an_outage(vibedream_conn: EmulatorServer) -> None:
    ids = [submit(vibedream_conn) for _ in range(10)]
    outage(vibedream_conn, 4.0)
    [event] = asyncio.run(
        fire_all([VibeDreamBatchTrigger(ids, poll_interval=0.3, end_time=time.time() + 60)])
    )
    assert event["status"] == "success" and event["failed"] == {} and event["pending"] == []


def test_the_worker_loop_rides_out_an_outage_and_says_so(
    one_retry: EmulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vibedream_conn = one_retry
    httpx.post(
        f"{vibedream_conn.base_url}/_emulator/faults",
        json={"rules": [{"route": "poll", "kind": "outage", "status": 503, "seconds": 4.0}]},
    ).raise_for_status()
    task = VibeDreamUpscaleImageOperator(
        task_id="upscale",
        image=f"{vibedream_conn.base_url}/samples/64x48.png",
        target_resolution="2k",
        output_format="png",
        poll_interval=0.3,
        deferrable=False,
        timeout=60,
    )
    result = task.execute({"ti": FakeTI()})
    assert result["status"] == "completed"
    assert "VibeDream API unavailable for" in capsys.readouterr().out


def test_outage_faults_come_and_go(vibedream_conn: EmulatorServer) -> None:
    outage(vibedream_conn, 0.5)
    url = f"{vibedream_conn.base_url}/api/v1/predictions/x"
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    answers = [httpx.get(url, headers=headers).status_code]
    assert answers == [503]

    def answered_again() -> bool:
        answers.append(httpx.get(url, headers=headers).status_code)
        return answers[-1] == 404

    # The API answers again once the outage's 0.5 s are over, and only then.
    until(answered_again, timeout=10, what="the outage to end")
    assert set(answers[:-1]) == {503}
    assert (
        json.loads(httpx.get(f"{vibedream_conn.base_url}/_emulator/faults").text)["rules"][0]["fired"]
        == len(answers) - 1
    )
