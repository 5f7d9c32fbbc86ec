"""The job lifecycle in a real Airflow (api-server, scheduler, dag-processor and triggerer as separate
processes, REST API clears), counted in the jobs the emulator created:

- a cleared successful task whose templated resolution changed submits anew (2 jobs, new size);
- a mapped task whose upstream list changed between a run and its clear gets each index's own image;
- a 30-image batch cut by its execution_timeout mid-submission, retried: exactly 30 jobs, 30 in the manifest;
- a garbage 2xx on submit with retries=2: 1 job, failed without retry;
- a 401 seen by the trigger: failed without retry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_vibedream.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, connection_json
from tests.e2e.cluster import AirflowCluster, wait_for
from tests.e2e.test_crash_safety import copy_dags, files_containing, reset, stats

pytestmark = pytest.mark.e2e

DAGS = ("vibedream_lifecycle_single", "vibedream_lifecycle_mapped", "vibedream_lifecycle_batch")


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lifecycle")


@pytest.fixture(scope="module")
def emulator(module_tmp: Path) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(
        "--api-key", TEST_KEY, "--processing-seconds", "1", log_path=module_tmp / "emulator.log"
    ) as process:
        yield process


@pytest.fixture(scope="module")
def cluster(module_tmp: Path, dags_folder: Path, emulator: EmulatorProcess) -> Iterator[AirflowCluster]:
    airflow = AirflowCluster(
        module_tmp / "airflow",
        copy_dags(dags_folder, module_tmp / "dags", "vibedream_lifecycle.py"),
        env={"AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(emulator.base_url)},
    )
    try:
        airflow.start_all()
        for dag_id in DAGS:
            airflow.wait_for_dag(dag_id)
        yield airflow
    finally:
        airflow.stop()


def faults(emulator: EmulatorProcess, *rules: dict[str, Any]) -> None:
    httpx.post(f"{emulator.base_url}/_emulator/faults", json={"rules": list(rules)}).raise_for_status()


def set_variable(cluster: AirflowCluster, key: str, value: str) -> None:
    if cluster.api("GET", f"/variables/{key}").status_code == 200:
        response = cluster.api("PATCH", f"/variables/{key}", json={"key": key, "value": value})
    else:
        response = cluster.api("POST", "/variables", json={"key": key, "value": value})
    response.raise_for_status()


def clear(cluster: AirflowCluster, dag_id: str, run_id: str, task_ids: list[str] | None = None) -> None:
    body: dict[str, Any] = {
        "dry_run": False,
        "dag_run_id": run_id,
        "only_failed": False,
        "reset_dag_runs": True,
    }
    if task_ids is not None:
        body["task_ids"] = task_ids
    response = cluster.api("POST", f"/dags/{dag_id}/clearTaskInstances", json=body)
    response.raise_for_status()
    assert response.json()["total_entries"] >= 1


def wait_for_rerun(cluster: AirflowCluster, dag_id: str, run_id: str, task_id: str, tries: int) -> str:
    """Wait until every ``task_id`` instance reached try ``tries`` and the run finished."""
    wait_for(
        lambda: all(ti["try_number"] >= tries for ti in cluster.task_instances(dag_id, run_id, task_id)),
        timeout=120,
        what=f"{dag_id}.{task_id} to start try {tries}",
    )
    return cluster.wait_for_run(dag_id, run_id)


def test_a_clear_after_the_resolution_changed_submits_anew(
    cluster: AirflowCluster, emulator: EmulatorProcess, module_tmp: Path
) -> None:
    dag_id = "vibedream_lifecycle_single"
    reset(emulator)
    set_variable(cluster, "vibedream_e2e_resolution", "2k")
    conf = {"image": f"{emulator.base_url}/samples/640x480.png", "output": str(module_tmp / "single")}
    run_id = cluster.trigger(dag_id, conf)
    assert cluster.wait_for_run(dag_id, run_id) == "success"
    first = cluster.xcom(dag_id, run_id, "upscale")
    assert first["files"][0]["width"] == 2048 and stats(emulator)["accepted_submissions"] == 1

    set_variable(cluster, "vibedream_e2e_resolution", "4k")
    clear(cluster, dag_id, run_id, ["upscale"])
    assert wait_for_rerun(cluster, dag_id, run_id, "upscale", 2) == "success"
    second = cluster.xcom(dag_id, run_id, "upscale")
    assert stats(emulator)["accepted_submissions"] == 2  # submitted anew ...
    assert second["id"] != first["id"]
    assert (second["files"][0]["width"], second["files"][0]["height"]) == (3840, 2880)  # ... at the new size
    print(f"\nresolution clear: jobs=2, first {first['files'][0]['width']}px, after clear 3840px")


def test_a_mapped_task_whose_list_changed_gets_each_index_its_own_image(
    cluster: AirflowCluster, emulator: EmulatorProcess, module_tmp: Path
) -> None:
    dag_id = "vibedream_lifecycle_mapped"
    reset(emulator)
    # Three shapes, so each output's size says which input it was made from.
    shapes = {"64x64": (2048, 2048), "128x64": (2048, 1024), "64x128": (1024, 2048)}
    urls = {shape: f"{emulator.base_url}/samples/{shape}.png" for shape in shapes}
    set_variable(cluster, "vibedream_e2e_images", json.dumps([urls["64x64"], urls["128x64"], urls["64x128"]]))
    run_id = cluster.trigger(dag_id, {"output": str(module_tmp / "mapped")})
    assert cluster.wait_for_run(dag_id, run_id) == "success"

    rotated = ["64x128", "64x64", "128x64"]
    set_variable(cluster, "vibedream_e2e_images", json.dumps([urls[shape] for shape in rotated]))
    clear(cluster, dag_id, run_id)
    assert wait_for_rerun(cluster, dag_id, run_id, "upscale", 2) == "success"
    sizes = []
    for index, shape in enumerate(rotated):
        result = cluster.xcom_mapped(dag_id, run_id, "upscale", index)
        sizes.append((result["files"][0]["width"], result["files"][0]["height"]))
        assert sizes[-1] == shapes[shape], f"map index {index} got another image's output"
        # The ledger (beside the outputs) knows each image by its content, whichever index now holds it.
        assert result["reused"] is True and result["cost_cents"] == 0
    assert stats(emulator)["accepted_submissions"] == 3  # the first run's three, none after the clear
    print(f"\nmapped clear: jobs=3, sizes after clear {sizes} for {rotated}")


def test_a_batch_cut_by_its_execution_timeout_is_retried_without_paying_twice(
    cluster: AirflowCluster, emulator: EmulatorProcess, module_tmp: Path
) -> None:
    dag_id = "vibedream_lifecycle_batch"
    reset(emulator)
    # Slow submits, two at a time: 30 images take ~30 s, past the 12 s execution_timeout.
    faults(emulator, {"route": "submit", "kind": "slow", "delay": 2.0})
    images = [f"{emulator.base_url}/samples/{32 + i}x24.png" for i in range(30)]
    run_id = cluster.trigger(dag_id, {"images": json.dumps(images), "output": str(module_tmp / "batch")})
    wait_for(
        lambda: cluster.task_instances(dag_id, run_id, "batch")[0]["state"] == "up_for_retry",
        timeout=120,
        what="the first try to time out",
    )
    cut_at = stats(emulator)["accepted_submissions"]
    assert 0 < cut_at < 30
    faults(emulator)  # the retry's submits are fast
    assert cluster.wait_for_run(dag_id, run_id) == "success"
    [ti] = cluster.task_instances(dag_id, run_id, "batch")
    summary = cluster.xcom(dag_id, run_id, "batch")
    assert ti["try_number"] == 2
    assert stats(emulator)["accepted_submissions"] == 30  # exactly one job per image
    manifest = Path(summary["manifest"].removeprefix("file://")).read_text().splitlines()
    assert len(manifest) == 30 and summary["completed"] == 30
    assert len({json.loads(line)["prediction_id"] for line in manifest}) == 30
    print(f"\nbatch timeout: cut after {cut_at} jobs, retried: jobs=30, manifest lines=30")


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ({"route": "submit", "kind": "garbage", "after_create": True}, "submission state unknown"),
        ({"route": "poll", "kind": "status", "status": 401}, "HTTP 401"),
    ],
    ids=["garbage-2xx-on-submit", "401-seen-by-the-trigger"],
)
def test_permanent_failures_fail_without_retry(
    cluster: AirflowCluster, emulator: EmulatorProcess, module_tmp: Path, rule: dict[str, Any], words: str
) -> None:
    dag_id = "vibedream_lifecycle_single"
    reset(emulator)
    set_variable(cluster, "vibedream_e2e_resolution", "2k")
    faults(emulator, rule)
    # An output path per case: the first case leaves its image in "submission state unknown" in the
    # ledger beside its outputs, which would (rightly) stop the next case before any request.
    output = module_tmp / f"fail-{rule['kind']}"
    conf = {"image": f"{emulator.base_url}/samples/320x240.png", "output": str(output)}
    run_id = cluster.trigger(dag_id, conf)
    try:
        assert cluster.wait_for_run(dag_id, run_id) == "failed"
    finally:
        faults(emulator)
    [ti] = cluster.task_instances(dag_id, run_id, "upscale")
    assert (ti["state"], ti["try_number"]) == ("failed", 1)  # retries=2, none used
    assert stats(emulator)["accepted_submissions"] == 1
    logs = "".join(p.read_text(errors="replace") for p in (cluster.home / "logs").rglob("*") if p.is_file())
    assert words in logs
    print(f"\n{rule['route']} {rule['kind']}: jobs=1, state=failed, try_number=1")


def test_the_api_key_is_in_no_file_of_this_deployment(cluster: AirflowCluster) -> None:
    assert files_containing(cluster.home, TEST_KEY.encode()) == []


def test_no_resumed_task_was_failed_by_a_stale_executor_event(cluster: AirflowCluster) -> None:
    # Every job above finishes (or fails for good) within seconds of its deferral: without the
    # settle time (tasks/settle.py) Airflow's scheduler failed resumed attempts here, logging
    # this line (apache/airflow#71580, #72716).
    scheduler_log = (cluster.home / "scheduler.out").read_text(errors="replace")
    mismatches = [
        line for line in scheduler_log.splitlines() if "but the task instance's state attribute" in line
    ]
    assert mismatches == []
