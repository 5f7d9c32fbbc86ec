"""Two things only a real Airflow shows (api-server, scheduler, dag-processor and triggerer as separate
processes, runs triggered through the REST API), counted in the jobs the emulator created:

- a truncated PNG (its header reads fine, the API fails its job as undecodable) in a deferrable batch
  over an S3 prefix is paid once across three runs: run 1 makes 2 jobs, runs 2 and 3 make none and
  list it ``skipped`` as a known bad input; every run fails after its first try although the task
  has ``retries=2`` (the only failure is final: AirflowFailException);
- two DAGs' deferrable upscales waiting in one triggerer at the same time (one shared poll scheduler,
  polls slowed by the emulator so both are in flight together): each task's log holds its own
  prediction id and never the other's.

Both share one deployment (module scope): starting four Airflow processes is most of a test's time.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from airflow_vibedream.emulator.imaging import sample_image
from airflow_vibedream.emulator.process import EmulatorProcess
from airflow_vibedream.tasks.manifest import manifest_uri
from tests.conftest import MotoS3, connection_json
from tests.e2e.cluster import AirflowCluster, log_line, wait_for
from tests.e2e.services import deferral_safe_emulator
from tests.e2e.test_crash_safety import reset, stats
from tests.e2e.test_lifecycle_e2e import faults

pytestmark = pytest.mark.e2e

BUCKET = "known-bad-e2e"  # as in tests/dags/vibedream_known_bad.py
KNOWN_BAD = "vibedream_known_bad"
LOGS_A, LOGS_B = "vibedream_trigger_logs_a", "vibedream_trigger_logs_b"
TASK_ID = "upscale"
#: The emulator's default costCents of one job (airflow_vibedream/emulator/state.py).
CENTS_PER_JOB = 2
#: Every poll answered a second late: two triggers' polls are in flight together.
SLOW_POLLS = {"route": "poll", "kind": "slow", "delay": 1.0}


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("known_bad")


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
    # Jobs of 8 s: longer than Airflow's own deferral race (see deferral_safe_emulator), and long
    # enough for two triggers to wait together.
    with deferral_safe_emulator(module_tmp) as process:
        yield process


@pytest.fixture(scope="module")
def cluster(
    module_tmp: Path, dags_folder: Path, s3: MotoS3, emulator: EmulatorProcess
) -> Iterator[AirflowCluster]:
    dags = module_tmp / "dags"
    dags.mkdir()
    for name in ("vibedream_known_bad.py", "vibedream_trigger_logs.py"):
        shutil.copy(dags_folder / name, dags)
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
        airflow.stop()  # every component, by its own pid


def jobs(emulator: EmulatorProcess) -> int:
    return int(stats(emulator).get("accepted_submissions", 0))


def trigger_at(cluster: AirflowCluster, dag_id: str, logical_date: str, conf: dict[str, Any]) -> str:
    response = cluster.api(
        "POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": conf}
    )
    response.raise_for_status()
    return str(response.json()["dag_run_id"])


def try_log(cluster: AirflowCluster, dag_id: str, run_id: str, try_number: int) -> list[str]:
    """One try's log through the REST API (the worker's lines and the trigger's), as lines."""
    response = cluster.api(
        "GET",
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{TASK_ID}/logs/{try_number}",
        params={"full_content": True},
        headers={"Accept": "application/json"},
    )
    response.raise_for_status()
    return [log_line(entry) for entry in response.json().get("content", [])]


def manifest_lines(s3: MotoS3, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's manifest (written before the task fails), by input file name; empty if none."""
    uri = manifest_uri(f"s3://{BUCKET}/out", dag_id, run_id, TASK_ID, None)
    try:
        body = s3.client().get_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"))["Body"].read()
    except ClientError:  # no manifest: the run failed before writing it
        return {}
    lines = [json.loads(line) for line in body.decode().splitlines()]
    return {Path(line["input"]).name: line for line in lines}


def cost(lines: dict[str, dict[str, Any]]) -> int:
    return sum(line.get("cost_cents") or 0 for line in lines.values())


def test_a_truncated_input_is_paid_once_across_three_runs_without_airflow_retries(
    cluster: AirflowCluster, emulator: EmulatorProcess, s3: MotoS3
) -> None:
    cluster.wait_for_dag(KNOWN_BAD)
    reset(emulator)
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key="in/good.png", Body=sample_image(64, 48, "PNG"))
    whole = sample_image(64, 48, "PNG", noise=True)
    client.put_object(Bucket=BUCKET, Key="in/truncated.png", Body=whole[: len(whole) // 2])

    runs: list[dict[str, Any]] = []
    for day in (1, 2, 3):
        started, jobs_before = time.monotonic(), jobs(emulator)
        run_id = trigger_at(cluster, KNOWN_BAD, f"2026-01-0{day}T00:00:00+00:00", {})
        state = cluster.wait_for_run(KNOWN_BAD, run_id, timeout=240)
        ti = cluster.task_instance(KNOWN_BAD, run_id, TASK_ID)
        log = try_log(cluster, KNOWN_BAD, run_id, max(1, ti["try_number"]))
        runs.append(
            {
                "day": day,
                "run_id": run_id,
                "state": state,
                "seconds": time.monotonic() - started,
                "ti_state": ti["state"],
                "try_number": ti["try_number"],
                "max_tries": ti["max_tries"],
                "jobs": jobs(emulator),
                "new_jobs": jobs(emulator) - jobs_before,
                "lines": manifest_lines(s3, KNOWN_BAD, run_id),
                "error": [line for line in log if "images failed" in line],
            }
        )

    report = ["truncated input across three runs:"]
    for run in runs:
        report += [
            f"  run {run['day']} ({run['run_id']}): {run['state']} in {run['seconds']:.0f} s; task "
            f"{run['ti_state']} at try {run['try_number']} (max_tries {run['max_tries']}); jobs so far "
            f"{run['jobs']}; cost in its manifest {cost(run['lines'])} cents (API: {run['new_jobs']} new "
            f"jobs, {run['new_jobs'] * CENTS_PER_JOB} cents)",
            *(f"    {name}: {line}" for name, line in sorted(run["lines"].items())),
            *(f"    log: {line}" for line in run["error"]),
        ]
    report.append(f"  emulator counters: {stats(emulator)}")
    evidence = "\n".join(report)
    print("\n" + evidence)

    assert [run["jobs"] for run in runs] == [2, 2, 2], f"jobs after each run (expected 2, 2, 2)\n{evidence}"
    for run in runs:
        # retries=2 were there to take, and none was: the only failure is final.
        assert run["max_tries"] == 2, evidence
        assert (run["state"], run["ti_state"], run["try_number"]) == ("failed", "failed", 1), evidence
        assert any("no retry is made" in line for line in run["error"]), evidence
        assert set(run["lines"]) == {"good.png", "truncated.png"}, evidence
    # What each run reports it spent is what the API billed it: 2 jobs in run 1, none after.
    assert [cost(run["lines"]) for run in runs] == [run["new_jobs"] * CENTS_PER_JOB for run in runs], evidence
    first = runs[0]["lines"]
    assert first["good.png"]["status"] == "completed", evidence
    assert first["truncated.png"]["status"] == "failed", evidence
    assert "could not be decoded" in first["truncated.png"]["error"], evidence
    assert first["truncated.png"]["cost_cents"] == CENTS_PER_JOB, evidence
    for run in runs[1:]:
        truncated, good = run["lines"]["truncated.png"], run["lines"]["good.png"]
        assert truncated["status"] == "skipped" and "known bad input" in truncated["error"], evidence
        assert not truncated["cost_cents"], evidence
        assert good["status"] == "reused", evidence


def trigger_log_entries(cluster: AirflowCluster, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """What the triggerer filed under the task: its trigger log files in the log folder (JSON lines)."""
    folder = cluster.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={TASK_ID}"
    entries = []
    for path in sorted(folder.glob("attempt=1.log.trigger.*.log")):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
    return entries


def status_seen(entries: list[dict[str, Any]], prediction_id: str | None, status: str) -> datetime | None:
    """When the trigger's log first said the prediction had ``status``."""
    said = f"VibeDream prediction {prediction_id} is {status} after"
    return next(
        (datetime.fromisoformat(e["timestamp"]) for e in entries if said in str(e.get("event"))), None
    )


def test_two_dags_triggers_in_one_triggerer_log_only_their_own_prediction(
    cluster: AirflowCluster, emulator: EmulatorProcess
) -> None:
    for dag_id in (LOGS_A, LOGS_B):
        cluster.wait_for_dag(dag_id)
    reset(emulator)
    faults(emulator, SLOW_POLLS)
    runs = {
        LOGS_A: cluster.trigger(LOGS_A, {"image": f"{emulator.base_url}/samples/64x48.png"}),
        LOGS_B: cluster.trigger(LOGS_B, {"image": f"{emulator.base_url}/samples/72x48.png"}),
    }

    def both_deferred() -> list[dict[str, Any]] | None:
        tis = [cluster.task_instance(dag_id, run_id, TASK_ID) for dag_id, run_id in runs.items()]
        return tis if all(ti["state"] == "deferred" and ti.get("triggerer_job") for ti in tis) else None

    together = wait_for(both_deferred, timeout=180, interval=0.25, what="both tasks deferred at once")
    states = {dag_id: cluster.wait_for_run(dag_id, run_id, timeout=180) for dag_id, run_id in runs.items()}
    faults(emulator)

    results = {
        dag_id: cluster.xcom(dag_id, run_id, TASK_ID) if states[dag_id] == "success" else {}
        for dag_id, run_id in runs.items()
    }
    ids = {dag_id: result.get("id") for dag_id, result in results.items()}
    reported_cents = sum(result.get("cost_cents") or 0 for result in results.values())
    logs = {dag_id: "\n".join(try_log(cluster, dag_id, run_id, 1)) for dag_id, run_id in runs.items()}
    entries = {dag_id: trigger_log_entries(cluster, dag_id, run_id) for dag_id, run_id in runs.items()}
    trigger_logs = {dag_id: "\n".join(str(e.get("event")) for e in entries[dag_id]) for dag_id in runs}
    # Each trigger's wait, from its first "processing" to its "completed" line: they overlap when
    # both triggers were polling at the same time.
    waits = {
        dag_id: (
            status_seen(entries[dag_id], ids[dag_id], "processing"),
            status_seen(entries[dag_id], ids[dag_id], "completed"),
        )
        for dag_id in runs
    }
    (a_from, a_to), (b_from, b_to) = waits[LOGS_A], waits[LOGS_B]
    overlap = (
        (min(a_to, b_to) - max(a_from, b_from)).total_seconds()
        if a_from and a_to and b_from and b_to
        else None
    )
    triggerer_jobs = {ti["dag_id"]: (ti["triggerer_job"] or {}).get("id") for ti in together}
    report = [
        f"two DAGs' triggers in one triggerer: runs {states}; both deferred at once in triggerer jobs "
        f"{triggerer_jobs}; the triggers' waits (processing .. completed) overlapped {overlap} s; "
        f"prediction ids {ids}; reported cost {reported_cents} cents; emulator counters {stats(emulator)}",
    ]
    for dag_id, other in ((LOGS_A, LOGS_B), (LOGS_B, LOGS_A)):
        mine = [line for line in logs[dag_id].splitlines() if ids[dag_id] and ids[dag_id] in line]
        theirs = [line for line in logs[dag_id].splitlines() if ids[other] and ids[other] in line]
        report += [
            f"  {dag_id}: {len(mine)} log lines name its own prediction, {len(theirs)} the other's; its "
            f"trigger log files hold {len(entries[dag_id])} lines",
            *(f"    own: {line}" for line in mine),
            *(f"    OTHER'S: {line}" for line in theirs),
        ]
    evidence = "\n".join(report)
    print("\n" + evidence)

    assert states == {LOGS_A: "success", LOGS_B: "success"}, evidence
    assert len(set(triggerer_jobs.values())) == 1, f"not one triggerer\n{evidence}"
    assert overlap is not None and overlap > 0, f"the two triggers did not poll at the same time\n{evidence}"
    assert stats(emulator)["accepted_submissions"] == 2, evidence
    assert reported_cents == 2 * CENTS_PER_JOB, evidence
    id_a, id_b = ids[LOGS_A], ids[LOGS_B]
    assert id_a and id_b and id_a != id_b, evidence
    for dag_id, own, other in ((LOGS_A, id_a, id_b), (LOGS_B, id_b, id_a)):
        assert own in logs[dag_id], f"{dag_id}'s log misses its own prediction\n{evidence}"
        assert other not in logs[dag_id], f"{dag_id}'s log names the other DAG's prediction\n{evidence}"
        # The trigger's own lines (status changes, told in the waiting trigger's context) reach it.
        assert f"VibeDream prediction {own} is" in trigger_logs[dag_id], evidence
        assert other not in trigger_logs[dag_id], evidence
