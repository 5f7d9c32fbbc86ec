"""VibeDreamHook against the emulator over real HTTP: async settings and the connection test."""

from __future__ import annotations

import pytest

from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from tests.conftest import connection_json, emulator_stats


async def test_async_settings_match_sync(vibedream_conn: EmulatorServer) -> None:
    hook = VibeDreamHook()
    assert await hook.aget_settings() == hook.get_settings()
    async with await hook.get_async_client() as client:
        with pytest.raises(Exception, match="not found"):
            await client.get_prediction("00000000-0000-0000-0000-000000000000")


def test_test_connection_against_the_emulator(vibedream_conn: EmulatorServer) -> None:
    ok, message = VibeDreamHook().test_connection()
    assert ok, message
    assert emulator_stats(vibedream_conn.base_url)["requests"] == 1


def test_test_connection_with_a_wrong_key(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(emulator.base_url, api_key="wrong"))
    ok, message = VibeDreamHook().test_connection()
    assert not ok
    assert "401" in message and "API key" in message
