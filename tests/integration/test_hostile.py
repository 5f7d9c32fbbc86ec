"""Hostile answers, served by the emulator over real HTTP: every one is a typed error (never a bare
RecursionError, OverflowError or AttributeError), the trigger always fires an event, names never
escape output_path, and a submit is never re-sent elsewhere."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_vibedream.client import (
    AsyncVibeDreamClient,
    ClientSettings,
    RetryPolicy,
    UpscaleRequest,
    VibeDreamClient,
)
from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.errors import (
    VibeDreamConfigError,
    VibeDreamError,
    VibeDreamProtocolError,
    VibeDreamSubmissionStateUnknownError,
    VibeDreamValidationError,
)
from airflow_vibedream.hooks.shared import aclose_shared_async_clients
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from airflow_vibedream.operators.vibedream import VibeDreamGenerateOperator, VibeDreamUpscaleImageOperator
from airflow_vibedream.triggers.vibedream import VibeDreamPredictionTrigger
from tests.conftest import TEST_KEY, connection_json, emulator_stats

NESTED = "[" * 100_000 + "]" * 100_000
HOSTILE_POLL_ANSWERS = {
    "deeply nested JSON": {"body": NESTED, "headers": {"content-type": "application/json"}},
    "NaN cost": {"body": '{"id": "p", "status": "processing", "costCents": NaN}'},
    "Infinity cost": {"body": '{"id": "p", "status": "processing", "costCents": Infinity}'},
    "numeric createdAt": {"body": '{"id": "p", "status": "processing", "createdAt": 1736942400}'},
    "outputs not text": {"body": '{"id": "p", "status": "completed", "outputs": [1, 2]}'},
    "not gzip though it says so": {"body": "plain text", "headers": {"content-encoding": "gzip"}},
}


def settings(emulator: EmulatorServer, **kwargs: Any) -> ClientSettings:
    return ClientSettings(
        api_key=TEST_KEY, base_url=emulator.base_url, retry=RetryPolicy(max_retries=0), **kwargs
    )


def answer(emulator: EmulatorServer, route: str, **rule: Any) -> None:
    emulator.state.faults.replace([{"route": route, "kind": "answer", "status": 200, **rule}])


def submit(emulator: EmulatorServer) -> str:
    return (
        VibeDreamClient(settings(emulator))
        .upscale(UpscaleRequest(f"{emulator.base_url}/samples/64x48.png", "2k", "jpeg"))
        .id
    )


@pytest.mark.parametrize("name", list(HOSTILE_POLL_ANSWERS))
def test_a_hostile_poll_answer_is_a_typed_error_on_both_clients(emulator: EmulatorServer, name: str) -> None:
    prediction_id = submit(emulator)
    answer(emulator, "poll", **HOSTILE_POLL_ANSWERS[name])
    with pytest.raises(VibeDreamError) as sync_error:
        VibeDreamClient(settings(emulator)).get_prediction(prediction_id)

    async def poll_async() -> None:
        async with AsyncVibeDreamClient.over_aiohttp(settings(emulator)) as client:
            await client.get_prediction(prediction_id)

    with pytest.raises(VibeDreamError) as async_error:
        asyncio.run(poll_async())
    for error in (sync_error.value, async_error.value):
        assert type(error) is VibeDreamProtocolError, (name, type(error), error)
        assert len(str(error)) < 800 and TEST_KEY not in str(error)  # a short, key-free excerpt


def test_a_redirect_loop_is_a_typed_error(emulator: EmulatorServer) -> None:
    prediction_id = submit(emulator)
    loop = f"{emulator.base_url}/api/v1/predictions/{prediction_id}"
    emulator.state.faults.replace([{"route": "poll", "kind": "redirect", "location": loop}])
    with pytest.raises(VibeDreamProtocolError, match="redirected more than 5 times"):
        VibeDreamClient(settings(emulator)).get_prediction(prediction_id)


def test_a_submit_answered_with_nan_cost_is_state_unknown_never_resent(emulator: EmulatorServer) -> None:
    answer(emulator, "submit", body='{"id": "p", "status": "processing", "costCents": NaN}')
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=emulator.base_url))  # retries on
    with pytest.raises(VibeDreamSubmissionStateUnknownError):
        client.upscale(UpscaleRequest(f"{emulator.base_url}/samples/8x8.png", "2k", "jpeg"))
    assert emulator_stats(emulator.base_url)["submissions"] == 1


@pytest.mark.parametrize("status", [307, 308])
def test_a_submit_redirected_elsewhere_is_not_followed(emulator: EmulatorServer, status: int) -> None:
    with EmulatorServer() as elsewhere:
        emulator.state.faults.replace(
            [
                {
                    "route": "submit",
                    "kind": "answer",
                    "status": status,
                    "headers": {"location": f"{elsewhere.base_url}/x"},
                }
            ]
        )
        with pytest.raises(VibeDreamProtocolError, match="never re-sent"):
            VibeDreamClient(settings(emulator)).upscale(
                UpscaleRequest(f"{emulator.base_url}/samples/8x8.png", "2k", "jpeg")
            )
        assert emulator_stats(elsewhere.base_url).get("requests", 0) == 0  # the body never left


@pytest.fixture
def malformed_server() -> Iterator[str]:
    """A TCP server that answers every request with a malformed status line."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 TWO-HUNDRED Okay-ish\r\nContent-Length: 2\r\n\r\n{}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        server.close()


def test_a_malformed_status_line_is_a_typed_error(malformed_server: str) -> None:
    no_retry = ClientSettings(api_key=TEST_KEY, base_url=malformed_server, retry=RetryPolicy(max_retries=0))
    with pytest.raises(VibeDreamError):
        VibeDreamClient(no_retry).get_prediction("p")

    async def poll_async() -> None:
        async with AsyncVibeDreamClient.over_aiohttp(no_retry) as client:
            await client.get_prediction("p")

    with pytest.raises(VibeDreamError):
        asyncio.run(poll_async())


def test_the_trigger_always_fires_an_event_on_hostile_answers(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(emulator.base_url))
    prediction_id = submit(emulator)
    answer(emulator, "poll", body=NESTED, headers={"content-type": "application/json"})

    async def fire() -> list[dict[str, Any]]:
        try:
            trigger = VibeDreamPredictionTrigger(prediction_id, poll_interval=0.2, end_time=time.time() + 2)
            return [event.payload async for event in trigger.run()]
        finally:
            await aclose_shared_async_clients()

    [event] = asyncio.run(asyncio.wait_for(fire(), timeout=60))
    assert event["status"] == "timeout"  # an unreadable answer is waited out, until the deadline


@pytest.mark.parametrize(
    "template", ["../../x.{ext}", "/etc/{prediction_id}.{ext}", "{nope}.png", "{dag_id.__class__}.{ext}"]
)
def test_names_that_would_escape_output_path_are_refused_when_the_operator_is_built(
    template: str, tmp_path: Path
) -> None:
    for build in (
        lambda: VibeDreamUpscaleImageOperator(
            task_id="u",
            image="https://example.com/a.png",
            target_resolution="2k",
            output_format="png",
            output_path=str(tmp_path),
            output_name_template=template,
        ),
        lambda: VibeDreamBatchUpscaleOperator(
            task_id="b",
            images=["https://example.com/a.png"],
            target_resolution="2k",
            output_format="png",
            output_path=str(tmp_path),
            output_name_template=template,
        ),
    ):
        with pytest.raises(VibeDreamValidationError) as info:
            build()
        assert info.value.field == "output_name_template"


def test_a_hostile_data_uri_subtype_never_becomes_an_extension(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    from airflow_vibedream.files.storage import persist_outputs

    [stored] = persist_outputs(
        ["data:image/../../evil;base64,iVBORw0KGgo="],
        str(tmp_path),
        names={"dag_id": "d", "prediction_id": "p"},
        name_template="{prediction_id}-{index}.{ext}",
    )
    assert stored.uri.endswith("/p-0.bin") and [p.name for p in tmp_path.iterdir()] == ["p-0.bin"]


@pytest.mark.parametrize("bad", [".", "..", "a/b", "a\\\\b"])
def test_dot_ids_are_refused_before_any_request(vibedream_conn: EmulatorServer, bad: str) -> None:
    with pytest.raises(VibeDreamValidationError):
        VibeDreamClient(settings(vibedream_conn)).get_prediction(bad)
    with pytest.raises(VibeDreamValidationError):
        VibeDreamGenerateOperator(task_id="g", model_id=bad, input={})
    assert emulator_stats(vibedream_conn.base_url).get("requests", 0) == 0


@pytest.mark.parametrize(("name", "value"), [("timeout", "inf"), ("timeout", "nan"), ("max_backoff", "inf")])
def test_non_finite_connection_extras_are_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json("https://api.vibedream.test", **{name: value})
    )
    with pytest.raises(VibeDreamConfigError, match=f"'{name}' must be a finite number"):
        VibeDreamHook().get_settings()


def test_non_finite_operator_numbers_are_refused_naming_the_field() -> None:
    for name in ("timeout", "poll_interval"):
        with pytest.raises(VibeDreamValidationError) as info:
            VibeDreamUpscaleImageOperator(
                task_id="u",
                image="https://example.com/a.png",
                target_resolution="2k",
                output_format="png",
                **{name: float("inf")},
            )
        assert info.value.field == name
    assert httpx  # the module is used by fixtures above
