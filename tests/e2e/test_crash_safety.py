"""Never double-bill, never hang, never leak, in a real Airflow:
(a) kill -9 the triggerer while the task is deferred; a new triggerer finishes it: 1 submission.
(b) kill -9 the worker's task process after the submit; the retry reconnects: 1 submission
    (through task_state_store on 3.3+, through the ledger beside the outputs on 3.1 and 3.2: (a)
    and (b) also run on the lowest supported Airflow).
(c) two triggerers on PostgreSQL run 20 deferred tasks: all succeed, 0 duplicate submissions.
(d) afterwards, every log file and a dump of the metadata database hold the API key 0 times."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_vibedream.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, connection_json
from tests.e2e.cluster import AirflowCluster, postgres_database, wait_for

pytestmark = pytest.mark.e2e

PG_ADMIN_URL = os.environ.get("VIBEDREAM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
FAST_TRIGGERER_FAILOVER = {
    # A dead triggerer's triggers go to a live one once its heartbeat is this many seconds old.
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "5",
}


def stats(emulator: EmulatorProcess) -> dict[str, int]:
    return dict(httpx.get(f"{emulator.base_url}/_emulator/stats").json()["counters"])


def reset(emulator: EmulatorProcess) -> None:
    httpx.post(f"{emulator.base_url}/_emulator/reset").raise_for_status()


def files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def copy_dags(source: Path, target: Path, *names: str) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(source / name, target / name)
    return target


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash")


@pytest.fixture(scope="module")
def emulator(module_tmp: Path) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(
        "--api-key", TEST_KEY, "--processing-seconds", "20", log_path=module_tmp / "emulator.log"
    ) as process:
        yield process


@pytest.fixture(scope="module")
def sqlite_cluster(
    module_tmp: Path, dags_folder: Path, emulator: EmulatorProcess
) -> Iterator[AirflowCluster]:
    airflow = AirflowCluster(
        module_tmp / "airflow",
        copy_dags(dags_folder, module_tmp / "dags", "vibedream_resume.py"),
        env={"AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(emulator.base_url), **FAST_TRIGGERER_FAILOVER},
    )
    try:
        airflow.start_all()
        yield airflow
    finally:
        airflow.stop()


def upscale_ti(cluster: AirflowCluster, dag_id: str, run_id: str) -> dict[str, Any]:
    return cluster.task_instance(dag_id, run_id, "upscale")


def test_a_triggerer_killed_mid_wait_is_replaced_without_resubmitting(
    sqlite_cluster: AirflowCluster, emulator: EmulatorProcess
) -> None:
    dag_id = "vibedream_resume_deferred"
    sqlite_cluster.wait_for_dag(dag_id)
    reset(emulator)
    run_id = sqlite_cluster.trigger(
        dag_id,
        {"image": f"{emulator.base_url}/samples/640x480.png", "output": str(sqlite_cluster.home / "out-a")},
    )
    wait_for(
        lambda: upscale_ti(sqlite_cluster, dag_id, run_id).get("triggerer_job"),
        timeout=180,
        interval=0.25,
        what="the trigger to run in the first triggerer",
    )
    sqlite_cluster.kill("triggerer", signal.SIGKILL)
    sqlite_cluster.start("triggerer", name="triggerer-replacement")

    assert sqlite_cluster.wait_for_run(dag_id, run_id) == "success"
    ti = upscale_ti(sqlite_cluster, dag_id, run_id)
    assert ti["try_number"] == 1  # the trigger resumed: no retry was needed
    result = sqlite_cluster.xcom(dag_id, run_id, "upscale")
    assert result["status"] == "completed"
    assert stats(emulator)["accepted_submissions"] == 1


def test_b_worker_killed_after_submit_retries_and_reconnects(
    sqlite_cluster: AirflowCluster, emulator: EmulatorProcess
) -> None:
    dag_id = "vibedream_resume_worker"
    sqlite_cluster.wait_for_dag(dag_id)
    reset(emulator)
    run_id = sqlite_cluster.trigger(
        dag_id,
        {"image": f"{emulator.base_url}/samples/640x480.png", "output": str(sqlite_cluster.home / "out-b")},
    )
    wait_for(lambda: stats(emulator).get("accepted_submissions") == 1, timeout=180, what="the submit")
    running = wait_for(
        lambda: (
            (ti := upscale_ti(sqlite_cluster, dag_id, run_id))["state"] == "running" and ti.get("pid") and ti
        ),
        timeout=60,
        what="the running task's pid",
    )
    os.kill(running["pid"], signal.SIGKILL)

    assert sqlite_cluster.wait_for_run(dag_id, run_id) == "success"
    ti = upscale_ti(sqlite_cluster, dag_id, run_id)
    assert ti["try_number"] == 2  # the kill cost one try ...
    assert stats(emulator)["accepted_submissions"] == 1  # ... but not a second job
    assert sqlite_cluster.xcom(dag_id, run_id, "upscale")["status"] == "completed"
    assert "Reconnected to VibeDream prediction" in "".join(
        p.read_text(errors="replace") for p in (sqlite_cluster.home / "logs").rglob("*") if p.is_file()
    )


def test_d_the_api_key_is_in_no_file_of_the_sqlite_deployment(sqlite_cluster: AirflowCluster) -> None:
    """(d) for this cluster: its logs, process output and SQLite database, after (a) and (b) ran."""
    assert any(sqlite_cluster.home.rglob("*.log")) and (sqlite_cluster.home / "airflow.db").is_file()
    assert files_containing(sqlite_cluster.home, TEST_KEY.encode()) == []


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL. In CI an unreachable server fails the run."""
    psycopg2 = pytest.importorskip("psycopg2")
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_database(PG_ADMIN_URL, prefix="vibedream_e2e"))
        except psycopg2.OperationalError as exc:
            if os.environ.get("CI") == "true":
                pytest.fail(f"PostgreSQL is required in CI and unreachable at {PG_ADMIN_URL}: {exc}")
            pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}")
        yield url


def test_c_two_triggerers_on_postgres_run_20_deferred_tasks_once_each(
    tmp_path: Path, dags_folder: Path, emulator: EmulatorProcess, postgres_url: str
) -> None:
    airflow = AirflowCluster(
        tmp_path / "airflow",
        copy_dags(dags_folder, tmp_path / "dags", "vibedream_resume.py"),
        env={"AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(emulator.base_url), **FAST_TRIGGERER_FAILOVER},
        sql_alchemy_conn=postgres_url,
    )
    dag_id = "vibedream_many_deferred"
    try:
        airflow.migrate()
        for component in ("api-server", "scheduler", "dag-processor"):
            airflow.start(component)
        airflow.start("triggerer", name="triggerer-1")
        airflow.start("triggerer", name="triggerer-2")
        wait_for(airflow._api_ready, timeout=120, what="the api-server")
        airflow.wait_for_dag(dag_id)
        reset(emulator)
        run_id = airflow.trigger(dag_id, {"base": emulator.base_url})
        assert airflow.wait_for_run(dag_id, run_id, timeout=600) == "success"
        tis = airflow.api(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100}
        ).json()
        upscales = [ti for ti in tis["task_instances"] if ti["task_id"] == "upscale"]
        assert len(upscales) == 20 and {ti["state"] for ti in upscales} == {"success"}
        counters = stats(emulator)
        assert counters["accepted_submissions"] == 20  # 0 duplicate submissions
        assert counters["predictions_completed"] == 20
    finally:
        airflow.stop()
    # (d) for this cluster: its files, and a dump of its PostgreSQL metadata database.
    assert files_containing(airflow.home, TEST_KEY.encode()) == []
    dump = subprocess.run(
        ["pg_dump", "--dbname", postgres_url.replace("+psycopg2", "")], capture_output=True, check=True
    ).stdout
    assert b"vibedream_many_deferred" in dump  # the dump really holds this deployment's data
    assert TEST_KEY.encode() not in dump
