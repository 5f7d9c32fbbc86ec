"""Integration tests run DAGs in-process with ``dag.test()``: they need a migrated Airflow database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def airflow_db(airflow_home: Path) -> Path:
    airflow_cli = str(Path(sys.executable).parent / "airflow")
    result = subprocess.run([airflow_cli, "db", "migrate"], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return airflow_home / "airflow.db"


@pytest.fixture(autouse=True)
def no_settle_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dag.test()`` runs a trigger in the task's own process: there is no scheduler to race, so the
    settle time after a deferral (tasks/settle.py, exercised by the e2e tests) is not waited."""
    monkeypatch.setenv("AIRFLOW__VIBEDREAM__RESUME_SETTLE_SECONDS", "0")


@pytest.fixture(autouse=True)
def nothing_learned_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with a triggerer that has seen no job finish: the poll scheduler's learned
    durations are process-wide (waiting/durations.py), so without this a test's poll count would
    depend on the jobs earlier tests happened to wait for (a learned schedule skips early polls)."""
    from airflow_vibedream.waiting import decisions, durations

    monkeypatch.setattr(decisions, "DURATIONS", durations.DurationModel())
