"""A forged submission record, written through Airflow's REST API, is no record: in a real Airflow
(api-server, scheduler, dag-processor, triggerer as separate processes) against the emulator.

The attack, from a plain "user"-role account (``mallory``): the emulator already ran a job on image
X. Mallory triggers a run of a paused DAG whose one upscale asks for image Y, writes the operator's
``task_state_store`` record for that task (Y's exact fingerprint, but X's prediction id), and
unpauses. Before records were signed, the task "reconnected" to X's job and stored X's upscale as
Y's. Now the record's missing MAC makes it no record: the task logs that it ignored it, submits Y
itself (one new job) and stores Y's upscale.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_vibedream.client.settings import ClientSettings
from airflow_vibedream.client.sync import VibeDreamClient
from airflow_vibedream.emulator.process import EmulatorProcess
from airflow_vibedream.jobs.single import STATE_KEY
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator
from airflow_vibedream.waiting.blocking import wait_for_prediction
from tests.conftest import TEST_KEY, connection_json, emulator_stats
from tests.e2e.cluster import AirflowCluster, log_line

pytestmark = pytest.mark.e2e

DAG_ID = "vibedream_forged_record"
TASK = {"target_resolution": "2k", "output_format": "png"}
DAG_SOURCE = f'''
from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

with DAG(dag_id="{DAG_ID}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    VibeDreamUpscaleImageOperator(
        task_id="upscale",
        image="{{{{ dag_run.conf['image'] }}}}",
        output_path="{{{{ dag_run.conf['output'] }}}}",
        target_resolution="{TASK["target_resolution"]}",
        output_format="{TASK["output_format"]}",
        poll_interval=1,
        deferrable=False,
        retries=0,
    )
'''


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("forged")


@pytest.fixture(scope="module")
def emulator(module_tmp: Path) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(
        "--api-key", TEST_KEY, "--processing-seconds", "1", log_path=module_tmp / "emulator.log"
    ) as process:
        yield process


@pytest.fixture(scope="module")
def users() -> dict[str, str]:
    return {name: secrets.token_urlsafe(12) for name in ("admin", "mallory")}


@pytest.fixture(scope="module")
def cluster(module_tmp: Path, emulator: EmulatorProcess, users: dict[str, str]) -> Iterator[AirflowCluster]:
    dags = module_tmp / "dags"
    dags.mkdir()
    (dags / f"{DAG_ID}.py").write_text(DAG_SOURCE)
    passwords = module_tmp / "passwords.json"
    passwords.write_text(json.dumps(users))
    airflow = AirflowCluster(
        module_tmp / "airflow",
        dags,
        env={
            "AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(emulator.base_url),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,mallory:user",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        },
    )
    try:
        airflow.log_in_as("admin", users["admin"])
        airflow.start_all()
        airflow.wait_for_dag(DAG_ID)
        yield airflow
    finally:
        airflow.stop()


def earlier_job(base_url: str, image: str) -> str:
    """A completed job on ``image``, made directly with the client (not by Airflow): its id."""
    with VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=base_url)) as client:
        submitted = client.submit("image-upscaler", {"image": image, **TASK})
        done = wait_for_prediction(client, submitted.id, poll_interval=0.5)
    assert done.status == "completed" and done.outputs, done
    return done.id


def task_log(cluster: AirflowCluster, run_id: str) -> str:
    response = cluster.api(
        "GET",
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/upscale/logs/1",
        params={"full_content": True},
        headers={"Accept": "application/json"},
    )
    response.raise_for_status()
    return "\n".join(log_line(entry) for entry in response.json()["content"])


def test_a_forged_state_store_record_is_ignored_and_the_task_upscales_its_own_image(
    cluster: AirflowCluster, emulator: EmulatorProcess, users: dict[str, str], module_tmp: Path
) -> None:
    image_x = f"{emulator.base_url}/samples/64x48.png"
    image_y = f"{emulator.base_url}/samples/32x16.png"
    output = module_tmp / "out"
    p_x = earlier_job(emulator.base_url, image_x)
    assert emulator_stats(emulator.base_url)["accepted_submissions"] == 1

    # The forged record: Y's ask and fingerprint exactly as the task computes them, X's job.
    spec = VibeDreamUpscaleImageOperator(task_id="upscale", image=image_y, **TASK).job_spec()
    forged: dict[str, Any] = {
        "fingerprint": spec.fingerprint,
        "asked": dict(spec.asked),
        "prediction_id": p_x,
        "cost_cents": 2,
        "state": "submitted",
        "error": None,
    }

    # Mallory ("user" role, not admin): trigger while paused, write the record, unpause.
    cluster.log_in_as("mallory", users["mallory"])
    assert cluster.api("GET", f"/dags/{DAG_ID}").json()["is_paused"] is True
    run_id = cluster.trigger(DAG_ID, {"image": image_y, "output": str(output)})
    put = cluster.api(
        "PUT",
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/upscale/state-store/{STATE_KEY}",
        json={"value": forged},
    )
    assert put.status_code == 204, put.text  # Airflow lets the plain user role write it
    stored = cluster.api(
        "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/upscale/state-store/{STATE_KEY}"
    )
    assert stored.json()["value"] == forged  # the forgery is what the task will read
    unpaused = cluster.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
    assert unpaused.status_code == 200, unpaused.text

    # The victim's view, as admin.
    cluster.log_in_as("admin", users["admin"])
    assert cluster.wait_for_run(DAG_ID, run_id, timeout=240) == "success"
    ti = cluster.task_instance(DAG_ID, run_id, "upscale")
    assert ti["state"] == "success" and ti["try_number"] == 1
    result = cluster.xcom(DAG_ID, run_id, "upscale")
    assert result["status"] == "completed"
    assert result["id"] != p_x  # X's job was not adopted ...
    assert emulator_stats(emulator.base_url)["accepted_submissions"] == 2  # ... Y got one job of its own

    # The stored output is Y's upscale: 32x16 -> long edge 2048, aspect 2:1 (X's would be 2048x1536).
    [file] = result["files"]
    assert (file["width"], file["height"]) == (2048, 1024)
    [path] = [p for p in output.rglob("*.png") if "_vibedream_ledger" not in p.parts]
    with Image.open(path) as image:
        assert image.size == (2048, 1024)

    log = task_log(cluster, run_id)
    assert f"record '{STATE_KEY}' of this task is not one this deployment signed" in log, log
    assert "Reconnected to VibeDream prediction" not in log, log
    assert f"Submitted VibeDream prediction {result['id']}" in log, log

    # The task overwrote the forgery with its own signed record of the same fingerprint: the forged
    # one matched the ask exactly, so only its missing MAC kept the task from adopting X's job.
    own = cluster.api(
        "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/upscale/state-store/{STATE_KEY}"
    ).json()["value"]
    assert own["fingerprint"] == forged["fingerprint"]
    assert own["prediction_id"] == result["id"]
    assert isinstance(own.get("mac"), str)
