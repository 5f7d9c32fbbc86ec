"""The poll window against the emulator over real HTTP: with every poll answered late (an API far
away) it grows past its start while polls wait; when the API answers 429 it shrinks."""

from __future__ import annotations

import asyncio

import pytest

from airflow_vibedream.client import ClientSettings, UpscaleRequest, VibeDreamClient
from airflow_vibedream.emulator import EmulatorConfig, EmulatorServer
from airflow_vibedream.emulator.faults import FaultRule
from airflow_vibedream.hooks.shared import aclose_shared_async_clients
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.waiting.decisions import PredictionWait
from airflow_vibedream.waiting.scheduler import loop_scheduler
from airflow_vibedream.waiting.window import START
from tests.conftest import TEST_KEY, connection_json
from tests.helpers import async_until
from tests.integration.emulated import faults

LATENCY = 0.5  # every poll answered after this long
WAITS = 60
INTERVAL = 0.3  # 60 waits polled every 0.3 s, 0.5 s each: ~100 polls in flight would keep pace


def test_the_window_grows_for_a_far_api_and_shrinks_on_429(monkeypatch: pytest.MonkeyPatch) -> None:
    config = EmulatorConfig(
        api_key=TEST_KEY,
        processing_seconds=600,
        synthetic_outputs=True,
        faults=[FaultRule(route="poll", kind="slow", delay=LATENCY)],
    )
    with EmulatorServer(config) as server:
        monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(server.base_url))
        client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=server.base_url))
        ids = [
            client.upscale(UpscaleRequest(f"{server.base_url}/samples/8x8.png", "2k", "jpeg")).id
            for _ in range(WAITS)
        ]
        asyncio.run(follow(server, ids))


async def follow(server: EmulatorServer, ids: list[str]) -> None:
    hook = VibeDreamHook()
    scheduler = loop_scheduler(hook.vibedream_conn_id, hook.get_shared_async_client)
    waits = [
        asyncio.ensure_future(scheduler.wait(PredictionWait(pid, interval=INTERVAL, kind="window-test")))
        for pid in ids
    ]
    try:
        await async_until(lambda: scheduler.window.size >= 2 * START, timeout=30, what="the window to grow")
        grown = scheduler.window.size
        faults(server, {"route": "poll", "kind": "status", "status": 429})
        await async_until(
            lambda: scheduler.window.size <= grown // 2, timeout=30, what="the window to shrink on 429"
        )
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await aclose_shared_async_clients()
    assert len(scheduler) == 0
