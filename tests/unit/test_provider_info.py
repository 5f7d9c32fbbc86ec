"""Provider metadata: valid against Airflow's own schema, and discovered by Airflow."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import airflow
import jsonschema

from airflow_vibedream.get_provider_info import get_provider_info


def test_provider_info_matches_airflows_schema() -> None:
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_every_listed_module_and_hook_imports() -> None:
    info = get_provider_info()
    for kind in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[kind]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for connection in info["connection-types"]:
        module, _, name = connection["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(module), name)
        assert hook.conn_type == connection["connection-type"]
        behaviour = hook.get_ui_field_behaviour()
        assert behaviour["relabeling"] == connection["ui-field-behaviour"]["relabeling"]
        assert behaviour["hidden_fields"] == connection["ui-field-behaviour"]["hidden-fields"]


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
