"""A real Airflow (api-server, scheduler, dag-processor, triggerer: separate processes, LocalExecutor,
SQLite) runs the example DAG against the emulator process: the upscale task defers, its trigger runs
in the triggerer, the downstream task gets the outputs, and the API key is nowhere on disk."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from airflow_vibedream.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, connection_json
from tests.e2e.cluster import AirflowCluster, wait_for

pytestmark = pytest.mark.e2e

DAG_ID = "example_vibedream_upscale"


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[EmulatorProcess]:
    # Ten seconds of processing: long enough to see the task deferred, short enough for CI.
    with EmulatorProcess(
        "--api-key", TEST_KEY, "--processing-seconds", "10", log_path=tmp_path / "emulator.log"
    ) as emulator:
        yield emulator


@pytest.fixture
def cluster(tmp_path: Path, dags_folder: Path, emulator_process: EmulatorProcess) -> Iterator[AirflowCluster]:
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(dags_folder / f"{DAG_ID}.py", dags)
    airflow = AirflowCluster(
        tmp_path / "airflow",
        dags,
        env={"AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(emulator_process.base_url)},
    )
    try:
        airflow.start_all()
        yield airflow
    finally:
        airflow.stop()


def files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_example_dag_defers_in_a_real_triggerer(
    cluster: AirflowCluster, emulator_process: EmulatorProcess, tmp_path: Path
) -> None:
    cluster.wait_for_dag(DAG_ID)
    output_dir = tmp_path / "outputs"
    run_id = cluster.trigger(
        DAG_ID,
        {
            "image": f"{emulator_process.base_url}/samples/640x480.png",
            "target_resolution": "2k",
            "output_format": "png",
            "output_path": str(output_dir),
        },
    )

    # The upscale task gives up its worker slot: deferred, with its trigger held by a triggerer.
    deferred = wait_for(
        lambda: (ti := cluster.task_instance(DAG_ID, run_id, "upscale"))["state"] == "deferred" and ti,
        timeout=240,
        interval=0.25,
        what="the upscale task to be deferred",
    )
    trigger_held = wait_for(
        lambda: (
            (ti := cluster.task_instance(DAG_ID, run_id, "upscale")).get("triggerer_job")
            or ti["state"] != "deferred"
        ),
        timeout=60,
        interval=0.25,
        what="a triggerer to take the trigger",
    )
    assert (
        deferred["trigger"]["classpath"] == "airflow_vibedream.triggers.vibedream.VibeDreamPredictionTrigger"
    )
    assert isinstance(trigger_held, dict) and trigger_held["job_type"] == "TriggererJob"
    assert TEST_KEY not in str(deferred["trigger"]["kwargs"])

    assert cluster.wait_for_run(DAG_ID, run_id) == "success"

    result = cluster.xcom(DAG_ID, run_id, "upscale")
    assert result["status"] == "completed" and result["cost_cents"] == 2
    assert cluster.xcom(DAG_ID, run_id, "upscale", key="prediction_id") == result["id"]
    checked = cluster.xcom(DAG_ID, run_id, "check_upscaled_image")
    assert checked["output"] == result["outputs"][0]
    assert (checked["width"], checked["height"], checked["format"]) == (2048, 1536, "PNG")
    stored = Path(result["outputs"][0].removeprefix("file://"))
    with Image.open(stored) as image:
        assert image.size == (2048, 1536)

    # The trigger's own log lines went through the triggerer into the task's trigger log.
    logs = cluster.home / "logs"
    trigger_lines = [
        line
        for path in logs.rglob("*")
        if path.is_file()
        for line in path.read_text(errors="replace").splitlines()
        if f"VibeDream prediction {result['id']} is completed after" in line
    ]
    assert trigger_lines, "the trigger's status-change line is in no log file"

    stats = httpx.get(f"{emulator_process.base_url}/_emulator/stats").json()["counters"]
    assert stats["accepted_submissions"] == 1
    assert stats.get("outputs_requests_with_authorization", 0) == 0

    # The key is in no task log, no XCom, no trigger row: nowhere in AIRFLOW_HOME, database included.
    assert files_containing(cluster.home, TEST_KEY.encode()) == []
