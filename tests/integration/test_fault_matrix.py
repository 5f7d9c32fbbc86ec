"""The client and trigger under the emulator's faults, over real HTTP: transient faults are ridden out
with exactly one accepted submission per prediction; permanent faults fail at once, 0 retries."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from airflow_vibedream.client import ClientSettings, RetryPolicy, UpscaleRequest, VibeDreamClient
from airflow_vibedream.emulator import EmulatorConfig, EmulatorServer
from airflow_vibedream.errors import VibeDreamError, VibeDreamSubmissionStateUnknownError
from airflow_vibedream.triggers.vibedream import VibeDreamPredictionTrigger
from airflow_vibedream.waiting.blocking import wait_for_prediction
from tests.conftest import TEST_KEY, connection_json, emulator_stats

PREDICTIONS = 100
TRANSIENT_FAULTS: list[dict[str, Any]] = [
    # Refused before the job exists: the client must retry the submit, honouring Retry-After.
    {"route": "submit", "kind": "status", "status": 429, "retry_after": 0, "every": 3},
    # Polls fail in every way a network and a busy API can fail.
    {"route": "poll", "kind": "status", "status": 503, "every": 5},
    {"route": "poll", "kind": "status", "status": 502, "every": 11},
    {"route": "poll", "kind": "status", "status": 429, "retry_after": 0, "every": 13},
    {"route": "poll", "kind": "drop", "every": 7},
    {"route": "poll", "kind": "slow", "delay": 1.5, "every": 29},  # beyond the 1 s request timeout
]
# About 45% of polls fail; 20 retries make a run of 21 failures for one call (~4e-8) a non-event.
FAST_RETRIES = {"timeout": 1, "max_retries": 20, "initial_backoff": 0.01, "max_backoff": 0.1}


def set_faults(base_url: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = httpx.post(f"{base_url}/_emulator/faults", json={"rules": rules})
    response.raise_for_status()
    return list(response.json()["rules"])


def fast_client(base_url: str, max_retries: int = 20) -> VibeDreamClient:
    retry = RetryPolicy(max_retries=max_retries, initial_backoff=0.01, max_backoff=0.1)
    return VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=base_url, timeout=1, retry=retry))


async def test_transient_faults_are_ridden_out_with_one_submission_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with EmulatorServer(EmulatorConfig(api_key=TEST_KEY, processing_seconds=0.3)) as emulator:
        monkeypatch.setenv(
            "AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(emulator.base_url, **FAST_RETRIES)
        )
        client = fast_client(emulator.base_url)
        image = f"{emulator.base_url}/samples/32x32.png"
        set_faults(emulator.base_url, TRANSIENT_FAULTS)
        ids = [
            (await asyncio.to_thread(client.upscale, UpscaleRequest(image, "2k", "jpeg"))).id
            for _ in range(PREDICTIONS)
        ]
        deadline = time.time() + 120
        triggers = [VibeDreamPredictionTrigger(pid, poll_interval=0.2, end_time=deadline) for pid in ids]

        async def first_event(trigger: VibeDreamPredictionTrigger) -> dict[str, Any]:
            async for event in trigger.run():
                return dict(event.payload)
            raise AssertionError("no event")

        events = await asyncio.gather(*(first_event(t) for t in triggers))
        rules = [rule.to_dict() for rule in emulator.state.faults.rules]
        fired = {f"{r['route']}:{r['kind']}:{r['status']}": r["fired"] for r in rules}
        stats = dict(emulator.state.counters)

    assert [e["status"] for e in events] == ["success"] * PREDICTIONS, [
        e for e in events if e["status"] != "success"
    ]
    assert len(set(ids)) == PREDICTIONS
    assert stats["accepted_submissions"] == PREDICTIONS  # exactly one accepted submission per prediction
    assert all(count > 0 for count in fired.values()), fired  # every fault really happened
    assert stats["submissions"] == PREDICTIONS + fired["submit:status:429"]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
@pytest.mark.parametrize("route", ["submit", "poll"])
def test_permanent_faults_fail_fast_with_zero_retries(
    emulator: EmulatorServer, route: str, status: int
) -> None:
    client = fast_client(emulator.base_url)
    image = f"{emulator.base_url}/samples/32x32.png"
    prediction_id = client.upscale(UpscaleRequest(image, "2k", "jpeg")).id if route == "poll" else None
    set_faults(emulator.base_url, [{"route": route, "kind": "status", "status": status}])
    before = emulator_stats(emulator.base_url).get("requests", 0)
    call = (
        (lambda: client.upscale(UpscaleRequest(image, "2k", "jpeg")))
        if prediction_id is None
        else (lambda: client.get_prediction(prediction_id))
    )
    with pytest.raises(VibeDreamError) as info:
        call()
    assert info.value.status_code == status
    assert info.value.api_message == f"Emulated fault: HTTP {status}"
    assert emulator_stats(emulator.base_url)["requests"] - before == 1  # 0 retries, so no backoff either


@pytest.mark.parametrize(
    "fault",
    [
        {"route": "submit", "kind": "status", "status": 500, "after_create": True},
        {"route": "submit", "kind": "status", "status": 503, "after_create": True},
        {"route": "submit", "kind": "drop", "after_create": True},
        {"route": "submit", "kind": "slow", "delay": 2},
    ],
    ids=["500-after-create", "503-after-create", "drop-after-create", "read-timeout"],
)
def test_ambiguous_submit_failures_are_never_resubmitted(
    emulator: EmulatorServer, fault: dict[str, Any]
) -> None:
    client = fast_client(emulator.base_url)
    set_faults(emulator.base_url, [fault])
    with pytest.raises(VibeDreamSubmissionStateUnknownError, match="NOT resubmitted"):
        client.upscale(UpscaleRequest(f"{emulator.base_url}/samples/32x32.png", "2k", "jpeg"))
    assert emulator_stats(emulator.base_url)["submissions"] == 1


def test_failed_and_stuck_predictions(emulator: EmulatorServer) -> None:
    client = fast_client(emulator.base_url)
    image = f"{emulator.base_url}/samples/32x32.png"
    set_faults(emulator.base_url, [{"route": "submit", "kind": "fail_prediction", "times": 1}])
    failed = wait_for_prediction(
        client, client.upscale(UpscaleRequest(image, "2k", "jpeg")).id, poll_interval=0.05
    )
    assert failed.status == "failed"
    assert failed.error == "Your request was flagged by content moderation. Please modify your prompt."
    set_faults(emulator.base_url, [{"route": "submit", "kind": "stuck", "times": 1}])
    stuck_id = client.upscale(UpscaleRequest(image, "2k", "jpeg")).id
    with pytest.raises(VibeDreamError, match="did not finish before the deadline") as info:
        wait_for_prediction(client, stuck_id, poll_interval=0.05, deadline=time.time() + 0.5)
    assert info.value.prediction_id == stuck_id
