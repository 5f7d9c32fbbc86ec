"""Every example DAG runs with ``dag.test()`` against the emulator over real HTTP; bad input never
reaches the API; the key never reaches the metadata database."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG
from PIL import Image

from airflow_vibedream.emulator import EmulatorServer
from tests.conftest import TEST_KEY, connection_json, emulator_stats

EXAMPLES = Path(__file__).resolve().parents[2] / "example_dags"


def load_dag(path: Path) -> DAG:
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dags = [value for value in vars(module).values() if isinstance(value, DAG)]
    assert len(dags) == 1, f"{path.name} should define one DAG"
    return dags[0]


def run_conf_for(dag_id: str, emulator: EmulatorServer, output_dir: Path) -> dict[str, Any]:
    """What each example needs to run offline. A new example must be added here to be tested."""
    confs = {
        "example_vibedream_upscale": {
            "image": f"{emulator.base_url}/samples/320x240.png",
            "target_resolution": "2k",
            "output_format": "jpeg",
            "output_path": str(output_dir),
        },
    }
    assert dag_id in confs, f"no offline run_conf for the example DAG {dag_id}: add one"
    return confs[dag_id]


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("example_*.py")))
def test_example_dag_runs_against_the_emulator(
    name: str, dags_folder: Path, airflow_db: Path, vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    dag = load_dag(dags_folder / name)
    run = dag.test(run_conf=run_conf_for(dag.dag_id, vibedream_conn, tmp_path))
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    stats = emulator_stats(vibedream_conn.base_url)
    assert stats["accepted_submissions"] >= 1
    assert stats.get("outputs_requests_with_authorization", 0) == 0
    images = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert images
    for image_path in images:
        with Image.open(image_path) as image:
            assert max(image.size) == 2048
    assert TEST_KEY.encode() not in airflow_db.read_bytes()


@pytest.fixture
def bad_input_dag(dags_folder: Path) -> DAG:
    return load_dag(dags_folder / "vibedream_bad_input.py")


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({"target_resolution": "3k"}, "target_resolution"),
        ({"output_format": "gif"}, "output_format"),
        ({"image": "not-a-url"}, "image"),
    ],
)
def test_templated_bad_input_fails_naming_the_field_with_zero_requests(
    airflow_db: Path,
    bad_input_dag: DAG,
    vibedream_conn: EmulatorServer,
    conf: dict[str, str],
    field: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_conf = {
        "image": "https://example.com/a.jpg",
        "target_resolution": "2k",
        "output_format": "png",
        **conf,
    }
    run = bad_input_dag.test(run_conf=run_conf)
    assert run.state == "failed"
    output = capsys.readouterr().out + caplog.text
    assert f"{field} must be" in output
    assert emulator_stats(vibedream_conn.base_url).get("requests", 0) == 0


def test_no_api_key_anywhere_fails_naming_the_field_with_zero_requests(
    airflow_db: Path,
    bad_input_dag: DAG,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(emulator.base_url, api_key=None))
    monkeypatch.delenv("VIBEDREAM_API_KEY", raising=False)
    run = bad_input_dag.test(
        run_conf={"image": "https://example.com/a.jpg", "target_resolution": "2k", "output_format": "png"}
    )
    assert run.state == "failed"
    output = capsys.readouterr().out + caplog.text
    assert "No VibeDream API key: set the 'API Key' (password) field" in output
    assert emulator_stats(emulator.base_url).get("requests", 0) == 0
