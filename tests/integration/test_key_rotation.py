"""A rotated key and the shared clients' life: a waiting trigger picks up the new key on a 401,
superseded clients are closed, a finished loop is not kept alive, and a script exits quietly."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
import weakref
from logging import getLogger
from typing import Any

import httpx
import pytest

from airflow_vibedream.client import ClientSettings, UpscaleRequest, VibeDreamClient
from airflow_vibedream.emulator import EmulatorConfig, EmulatorServer
from airflow_vibedream.hooks.shared import aclose_shared_async_clients
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.tasks.batch_wait import WorkerWait, wait_for_batch_in_worker
from airflow_vibedream.triggers.vibedream import VibeDreamBatchTrigger, VibeDreamPredictionTrigger
from airflow_vibedream.waiting.blocking import wait_for_prediction
from airflow_vibedream.waiting.loop_local import _LOCALS
from tests.conftest import TEST_KEY, connection_json, emulator_stats
from tests.helpers import async_until

NEW_KEY = "rotated-key-2b71c0"


def submit(emulator: EmulatorServer) -> str:
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=emulator.base_url))
    return client.upscale(UpscaleRequest(f"{emulator.base_url}/samples/64x48.png", "2k", "jpeg")).id


@pytest.fixture
def slow_emulator(monkeypatch: pytest.MonkeyPatch) -> Any:
    with EmulatorServer(EmulatorConfig(api_key=TEST_KEY, processing_seconds=2.0)) as server:
        monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(server.base_url))
        yield server


def rotate(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an operator of the API does: a new key at the API, then in the Airflow connection."""
    httpx.post(f"{emulator.base_url}/_emulator/api-key", json={"api_key": NEW_KEY}).raise_for_status()
    monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(emulator.base_url, api_key=NEW_KEY))


@pytest.mark.parametrize("kind", ["single", "batch"])
async def test_a_waiting_trigger_picks_up_a_rotated_key_on_a_401(
    slow_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    ids = [submit(slow_emulator) for _ in range(2)]
    trigger: Any = (
        VibeDreamPredictionTrigger(ids[0], poll_interval=0.2, end_time=time.time() + 30)
        if kind == "single"
        else VibeDreamBatchTrigger(ids, poll_interval=0.2, end_time=time.time() + 30)
    )
    try:
        waiting = asyncio.ensure_future(anext(trigger.run().__aiter__()))
        old_client = await VibeDreamHook().get_shared_async_client()
        polled = emulator_stats(slow_emulator.base_url).get("requests", 0)
        await async_until(
            lambda: emulator_stats(slow_emulator.base_url).get("requests", 0) > polled,
            what="the trigger to poll with the old key",
        )
        rotate(slow_emulator, monkeypatch)
        event = (await asyncio.wait_for(waiting, timeout=30)).payload
        assert event["status"] == "success", event
        new_client = await VibeDreamHook().get_shared_async_client()
        assert new_client.settings.api_key == NEW_KEY and new_client is not old_client
        # Superseded and idle: closed in the background, not leaked.
        await async_until(lambda: old_client.closed, what="the retired client to close")
    finally:
        await aclose_shared_async_clients()


async def test_an_unchanged_key_that_is_refused_fails_at_once(slow_emulator: EmulatorServer) -> None:
    prediction_id = submit(slow_emulator)
    slow_emulator.config.api_key = NEW_KEY  # rotated at the API only: the connection still has the old key
    try:
        trigger = VibeDreamPredictionTrigger(prediction_id, poll_interval=0.2, end_time=time.time() + 30)
        [event] = [e.payload async for e in trigger.run()]
        assert (event["status"], event["error_type"]) == ("error", "VibeDreamAuthError")
    finally:
        await aclose_shared_async_clients()


@pytest.mark.parametrize("kind", ["operator", "batch"])
def test_a_wait_in_the_worker_picks_up_a_rotated_key_on_a_401(
    slow_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The worker's wait re-reads the connection once after a refusal, as the triggers do."""
    prediction_id = submit(slow_emulator)
    hook = VibeDreamHook()
    client = hook.get_client()
    client.get_prediction(prediction_id)  # the old key works until the rotation
    rotate(slow_emulator, monkeypatch)
    deadline = time.time() + 30
    if kind == "operator":
        done = wait_for_prediction(
            client, prediction_id, poll_interval=0.2, deadline=deadline, reread=hook.reread_client
        )
        assert done.succeeded
    else:
        how = WorkerWait(deadline=deadline, interval=0.2, kind="k", concurrency=2, progress_interval=30)
        outcome = wait_for_batch_in_worker(
            client, [prediction_id], how, log=getLogger("test"), reread=hook.reread_client
        )
        assert outcome == {prediction_id: ("done", None)}
    assert hook.get_client().settings.api_key == NEW_KEY


def test_the_shared_clients_never_keep_a_finished_loop_alive(vibedream_conn: EmulatorServer) -> None:
    prediction_id = submit(vibedream_conn)
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def use_the_shared_client() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        client = await VibeDreamHook().get_shared_async_client()
        await client.get_prediction(prediction_id)

    for _ in range(3):
        asyncio.run(use_the_shared_client())
    gc.collect()
    # The last loop is still held by asgiref's thread-local "main_event_loop" (Airflow's async
    # connection lookup goes through sync_to_async), which lets it go when the next loop comes; the
    # shared clients hold none of them.
    assert [ref() for ref in loops[:-1]] == [None, None]
    assert len(_LOCALS) == 0


def test_a_script_using_the_shared_client_exits_without_unclosed_session_noise(
    vibedream_conn: EmulatorServer,
) -> None:
    prediction_id = submit(vibedream_conn)
    script = (
        "import asyncio\n"
        "from airflow_vibedream.hooks.vibedream import VibeDreamHook\n"
        "async def main():\n"
        "    client = await VibeDreamHook().get_shared_async_client()\n"
        f"    print((await client.get_prediction({prediction_id!r})).status)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(vibedream_conn.base_url)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(("processing", "completed"))
    assert "Unclosed" not in done.stderr, done.stderr[-2000:]
