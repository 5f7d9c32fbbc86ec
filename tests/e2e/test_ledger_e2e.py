"""Pay once per image, ever, in a real Airflow (api-server, scheduler, dag-processor, triggerer as
separate processes), against moto's S3 server and the emulator over real HTTP. Run on the newest
and on the lowest supported Airflow (3.1 has no ``task_state_store``: the ledger is all there is).

- a daily DAG with catchup over an ``s3_prefix`` that grows between runs (10, +5, +0 images) makes
  10, 5 and 0 jobs; clearing the whole DAG and running it again makes 0; an object overwritten with
  other bytes makes 1; another resolution makes new jobs;
- a task killed ``-9`` while its submit is in flight (the emulator holding the answer) ends with 1
  job and the unknown state said, or with 2 jobs and success when ``resubmit_unknown=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import airflow
import httpx
import pytest

from airflow_vibedream.emulator.imaging import sample_image
from airflow_vibedream.emulator.process import EmulatorProcess
from tests.conftest import MotoS3, connection_json, emulator_stats
from tests.e2e.cluster import AirflowCluster, log_line, wait_for
from tests.e2e.services import deferral_safe_emulator

pytestmark = pytest.mark.e2e

#: Airflow 3.3 added task_state_store (the task's own durable record, beside the ledger).
HAS_STATE_STORE = tuple(int(part) for part in airflow.__version__.split(".")[:2]) >= (3, 3)

BUCKET = "ledger-e2e"
DAILY = "vibedream_ledger_daily"
MANUAL = "vibedream_ledger_manual"


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ledger")


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    server.client().create_bucket(Bucket=BUCKET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def emulator(module_tmp: Path) -> Iterator[EmulatorProcess]:
    with deferral_safe_emulator(module_tmp) as process:
        yield process


@pytest.fixture(scope="module")
def cluster(
    module_tmp: Path, dags_folder: Path, s3: MotoS3, emulator: EmulatorProcess
) -> Iterator[AirflowCluster]:
    dags = module_tmp / "dags"
    dags.mkdir()
    shutil.copy(dags_folder / "vibedream_ledger.py", dags)
    airflow = AirflowCluster(
        module_tmp / "airflow",
        dags,
        env={
            "AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(emulator.base_url),
            "AIRFLOW_CONN_AWS_DEFAULT": s3.connection_json(),
        },
    )
    try:
        airflow.start_all()
        yield airflow
    finally:
        airflow.stop()


def jobs(emulator: EmulatorProcess) -> int:
    return int(emulator_stats(emulator.base_url).get("accepted_submissions", 0))


def put(s3: MotoS3, key: str, width: int, height: int = 30) -> None:
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=sample_image(width, height, "PNG"))


def daily_runs(cluster: AirflowCluster) -> list[dict[str, Any]]:
    response = cluster.api("GET", f"/dags/{DAILY}/dagRuns", params={"limit": 100, "order_by": "logical_date"})
    return list(response.json()["dag_runs"])


def day_done(cluster: AirflowCluster, day: int) -> dict[str, Any]:
    """The run of 2026-01-0<day>, once it succeeded."""

    def finished() -> dict[str, Any] | None:
        for run in daily_runs(cluster):
            if run["logical_date"].startswith(f"2026-01-0{day}") and run["state"] in ("success", "failed"):
                return run
        return None

    run = wait_for(finished, timeout=420, what=f"the daily run of day {day}")
    assert run["state"] == "success", cluster.describe_run(DAILY, run["dag_run_id"])
    return run


def manifest(s3: MotoS3, cluster: AirflowCluster, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    summary = cluster.xcom(dag_id, run_id, "upscale")
    key = summary["manifest"].removeprefix(f"s3://{BUCKET}/")
    body = s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


def test_a_daily_batch_over_a_growing_prefix_pays_for_new_images_only(
    cluster: AirflowCluster, s3: MotoS3, emulator: EmulatorProcess
) -> None:
    cluster.wait_for_dag(DAILY)
    for i in range(10):
        put(s3, f"in/img{i:03d}.png", 40 + i)
    s3.client().put_object(Bucket=BUCKET, Key="ready/2026-01-01", Body=b"")
    first = day_done(cluster, 1)
    assert jobs(emulator) == 10
    first_ids = {
        line["input"]: line["prediction_id"] for line in manifest(s3, cluster, DAILY, first["dag_run_id"])
    }

    for i in range(10, 15):
        put(s3, f"in/img{i:03d}.png", 40 + i)
    s3.client().put_object(Bucket=BUCKET, Key="ready/2026-01-02", Body=b"")
    second = day_done(cluster, 2)
    assert jobs(emulator) == 15
    lines = manifest(s3, cluster, DAILY, second["dag_run_id"])
    assert sorted(line["status"] for line in lines) == ["completed"] * 5 + ["reused"] * 10
    assert all(
        line["prediction_id"] == first_ids[line["input"]] for line in lines if line["status"] == "reused"
    )

    s3.client().put_object(Bucket=BUCKET, Key="ready/2026-01-03", Body=b"")
    third = day_done(cluster, 3)
    assert jobs(emulator) == 15
    assert cluster.xcom(DAILY, third["dag_run_id"], "upscale")["total_cost_cents"] == 0

    # The whole DAG cleared and run again: every image is in the ledger.
    cluster.cli("tasks", "clear", "--yes", DAILY)
    wait_for(
        lambda: len(runs := daily_runs(cluster)) == 3 and all(run["state"] == "success" for run in runs),
        timeout=600,
        what="the cleared runs to succeed again",
    )
    assert jobs(emulator) == 15

    # Other bytes under a known name are a new image.
    put(s3, "in/img003.png", 400, 300)
    run_id = cluster.trigger(MANUAL, {})
    assert cluster.wait_for_run(MANUAL, run_id, timeout=420) == "success"
    assert jobs(emulator) == 16
    statuses = {line["input"]: line["status"] for line in manifest(s3, cluster, MANUAL, run_id)}
    assert statuses.pop(f"s3://{BUCKET}/in/img003.png") == "completed"
    assert set(statuses.values()) == {"reused"}

    # Another resolution is another output.
    run_id = cluster.trigger(MANUAL, {"resolution": "4k"})
    assert cluster.wait_for_run(MANUAL, run_id, timeout=600) == "success"
    assert jobs(emulator) == 31


def every_try_log(cluster: AirflowCluster, dag_id: str, run_id: str) -> str:
    """The log of every try of the run's ``upscale`` task, lower-cased."""
    ti = cluster.task_instance(dag_id, run_id, "upscale")
    lines: list[str] = []
    for try_number in range(1, ti["try_number"] + 1):
        response = cluster.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/upscale/logs/{try_number}",
            params={"full_content": True},
            headers={"Accept": "application/json"},
        )
        lines += [log_line(entry) for entry in response.json().get("content", [])]
    return "\n".join(lines).lower()


@pytest.mark.parametrize(
    ("dag_id", "name"),
    [
        ("vibedream_ledger_inflight", "a.png"),
        ("vibedream_ledger_inflight_resubmit", "b.png"),
        ("vibedream_ledger_inflight_no_output", "c.png"),
    ],
)
def test_b_a_task_killed_while_its_submit_is_in_flight(
    cluster: AirflowCluster, s3: MotoS3, emulator: EmulatorProcess, dag_id: str, name: str
) -> None:
    cluster.wait_for_dag(dag_id)
    put(s3, f"single/{name}", {"a.png": 64, "b.png": 72}.get(name, 80), 48)
    before = jobs(emulator)
    # The next submit creates its job, then holds the answer for a minute.
    httpx.post(
        f"{emulator.base_url}/_emulator/faults",
        json={"rules": [{"route": "submit", "kind": "slow", "after_create": True, "delay": 60, "times": 1}]},
    ).raise_for_status()
    run_id = cluster.trigger(dag_id, {"name": name})
    wait_for(lambda: jobs(emulator) == before + 1, timeout=180, what="the job to be created")
    running = wait_for(
        lambda: (
            (ti := cluster.task_instance(dag_id, run_id, "upscale"))["state"] == "running"
            and ti.get("pid")
            and ti
        ),
        timeout=60,
        what="the running task's pid",
    )
    os.kill(running["pid"], signal.SIGKILL)  # its id never read: only the ledger's intent remains

    state = cluster.wait_for_run(dag_id, run_id, timeout=300)
    ti = cluster.task_instance(dag_id, run_id, "upscale")
    told = every_try_log(cluster, dag_id, run_id)
    if dag_id == "vibedream_ledger_inflight_no_output" and not HAS_STATE_STORE:
        # Airflow < 3.3 has no store outside output_path: the retry pays again, and the log said so.
        assert (state, jobs(emulator) - before) == ("success", 2)
        assert "can pay twice" in told
    elif dag_id in ("vibedream_ledger_inflight", "vibedream_ledger_inflight_no_output"):
        assert (state, jobs(emulator) - before, ti["try_number"]) == ("failed", 1, 2)
        assert "submission state unknown" in told
    else:
        assert (state, jobs(emulator) - before) == ("success", 2)
        assert cluster.xcom(dag_id, run_id, "upscale")["status"] == "completed"
