"""Airflow's own CLI finds the provider (a subprocess: not a unit test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_airflow_lists_the_provider_and_its_connection_type() -> None:
    airflow_cli = str(Path(sys.executable).parent / "airflow")
    providers = subprocess.run(
        [airflow_cli, "providers", "list", "--output", "json"], capture_output=True, text=True, env=os.environ
    )
    assert providers.returncode == 0, providers.stderr
    names = {p["package_name"] for p in json.loads(providers.stdout)}
    assert "airflow-provider-vibedream" in names
    hooks = subprocess.run(
        [airflow_cli, "providers", "hooks", "--output", "json"],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert hooks.returncode == 0, hooks.stderr
    assert any(h.get("connection_type") == "vibedream" for h in json.loads(hooks.stdout))
