"""`airflow connections test` against the emulator: one cheap authenticated call, a clear 401 text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_vibedream.emulator import EmulatorServer
from tests.conftest import TEST_KEY, connection_json, emulator_stats

AIRFLOW_CLI = str(Path(sys.executable).parent / "airflow")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (TEST_KEY, "Connection success!"),  # Airflow prints the hook's message on failures only
        ("wrong-key", "VibeDream refused the API key (HTTP 401)"),
    ],
)
def test_airflow_connections_test(
    airflow_db: Path, emulator: EmulatorServer, key: str, expected: str
) -> None:
    env = {
        **os.environ,
        # Airflow ships with connection tests disabled; a deployment opts in like this.
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(emulator.base_url, api_key=key),
    }
    result = subprocess.run(
        [AIRFLOW_CLI, "connections", "test", "vibedream_default"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert expected in output, output[-3000:]
    assert ("Connection success!" in output) == (key == TEST_KEY), output[-3000:]
    assert emulator_stats(emulator.base_url)["requests"] == 1  # one call, no retries
    assert key not in output  # the key is masked or never printed
