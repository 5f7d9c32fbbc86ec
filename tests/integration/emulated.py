"""Helpers of the integration tests that drive operators against the emulator over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator
from tests.conftest import emulator_stats


def faults(emulator: EmulatorServer, *rules: dict[str, Any]) -> None:
    httpx.post(f"{emulator.base_url}/_emulator/faults", json={"rules": list(rules)}).raise_for_status()


def jobs(emulator: EmulatorServer) -> int:
    return int(emulator_stats(emulator.base_url).get("accepted_submissions", 0))


def upscale(emulator: EmulatorServer, tmp_path: Path, **kwargs: Any) -> VibeDreamUpscaleImageOperator:
    values: dict[str, Any] = {
        "task_id": "upscale",
        "image": f"{emulator.base_url}/samples/64x48.png",
        "target_resolution": "2k",
        "output_format": "png",
        "output_path": str(tmp_path),
        "poll_interval": 0.1,
        "deferrable": False,
        **kwargs,
    }
    return VibeDreamUpscaleImageOperator(**values)


async def fire(trigger: Any) -> dict[str, Any]:
    """A trigger's one event, as the triggerer would hand it to the task (shared clients closed)."""
    from airflow_vibedream.hooks.shared import aclose_shared_async_clients

    try:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")
    finally:
        await aclose_shared_async_clients()
