"""N images through one batch task vs N mapped tasks, on the same real Airflow.

Airflow runs as separate processes (api-server, scheduler with LocalExecutor, dag-processor,
triggerer) on a fresh PostgreSQL database; the emulator runs in its own process and really
resamples every image (2k JPEG), and both DAGs store every output on disk. One DAG run per way, in
a fresh cluster each, the batch first.

Per way: wall time (the DAG run's start to end, as Airflow records it), worker-seconds (the task
instances' run time, as Airflow records it, summed), CPU seconds of the scheduler with its
LocalExecutor workers and their task processes, of the triggerer, and of the emulator.

Goal (issue 5): the batch >= 10x faster than the mapped tasks.
Size: ``VIBEDREAM_BENCH_IMAGES`` (default 1000).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import machine, process_cpu_seconds, write_result

KEY = "bench-key"
COUNT = int(os.environ.get("VIBEDREAM_BENCH_IMAGES", "1000"))
PG_ADMIN_URL = os.environ.get("VIBEDREAM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DAGS = Path(__file__).resolve().parent / "dags"
WAYS = {"batch": "vibedream_bench_batch", "mapped": "vibedream_bench_mapped"}


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and all its descendants, live or already reaped (cutime/cstime), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        fields = stats.get(current)
        if fields is not None:
            total += sum(int(value) for value in fields[11:15]) / tick
        todo.extend(children.get(current, []))
    return total


def seconds_between(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def run_way(way: str, work: Path, emulator: Any) -> dict[str, Any]:
    from tests.conftest import connection_json, emulator_stats
    from tests.e2e.cluster import AirflowCluster, postgres_database

    dag_id = WAYS[way]
    dags = work / f"dags-{way}"
    dags.mkdir()
    shutil.copy(DAGS / "vibedream_bench_scale.py", dags)
    with postgres_database(PG_ADMIN_URL, prefix="vibedream_bench") as database:
        airflow = AirflowCluster(
            work / f"airflow-{way}",
            dags,
            env={
                "AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(emulator.base_url, api_key=KEY),
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, COUNT)),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            },
            sql_alchemy_conn=database,
        )
        try:
            airflow.start_all()
            airflow.wait_for_dag(dag_id)
            emulator_pid = emulator.pid
            scheduler_pid = airflow.processes["scheduler"].pid
            cpu_before = {
                "scheduler": process_cpu_seconds(scheduler_pid),
                "workers": tree_cpu_seconds(scheduler_pid) - process_cpu_seconds(scheduler_pid),
                "triggerer": tree_cpu_seconds(airflow.processes["triggerer"].pid),
                "emulator": tree_cpu_seconds(emulator_pid),
            }
            counters_before = emulator_stats(emulator.base_url)
            run_id = airflow.trigger(
                dag_id, {"base": emulator.base_url, "count": COUNT, "output_path": str(work / "outputs")}
            )
            state = airflow.wait_for_run(dag_id, run_id, timeout=6 * 3600)
            cpu = {
                "scheduler": process_cpu_seconds(scheduler_pid) - cpu_before["scheduler"],
                "workers": tree_cpu_seconds(scheduler_pid)
                - process_cpu_seconds(scheduler_pid)
                - cpu_before["workers"],
                "triggerer": tree_cpu_seconds(airflow.processes["triggerer"].pid) - cpu_before["triggerer"],
                "emulator": tree_cpu_seconds(emulator_pid) - cpu_before["emulator"],
            }
            counters = emulator_stats(emulator.base_url)
            dag_run = airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
            task_instances = airflow.task_instances(dag_id, run_id)
        finally:
            airflow.stop()
    upscales = [ti for ti in task_instances if ti["task_id"] == "upscale"]
    stored = sum(
        1 for path in (work / "outputs" / dag_id).rglob("*") if path.is_file() and path.suffix != ".jsonl"
    )
    return {
        "way": way,
        "images": COUNT,
        "state": state,
        "task_instances": len(upscales),
        "succeeded": sum(1 for ti in upscales if ti["state"] == "success"),
        "outputs_stored": stored,
        "submissions": counters.get("accepted_submissions", 0)
        - counters_before.get("accepted_submissions", 0),
        "wall_seconds": seconds_between(dag_run.get("start_date"), dag_run.get("end_date")),
        # CPU of the LocalExecutor workers and every task process they ran: what the work cost the
        # worker side. (Airflow's task durations are reported too; a deferred task's includes its wait.)
        "worker_cpu_seconds": cpu["workers"],
        "task_instance_seconds": sum(float(ti.get("duration") or 0.0) for ti in task_instances),
        "scheduler_cpu_seconds": cpu["scheduler"],
        "triggerer_cpu_seconds": cpu["triggerer"],
        "emulator_cpu_seconds": cpu["emulator"],
    }


def main() -> dict[str, Any]:
    from airflow_vibedream.emulator.process import EmulatorProcess

    work = Path(tempfile.mkdtemp(prefix="vibedream-bench-airflow-scale-"))
    runs: list[dict[str, Any]] = []
    with EmulatorProcess(
        "--api-key",
        KEY,
        "--processing-seconds",
        "5",
        "--processing-seconds-max",
        "20",
        log_path=work / "emulator.log",
    ) as emulator:
        for way in WAYS:
            started = time.monotonic()
            runs.append(run_way(way, work, emulator))
            runs[-1]["bench_seconds"] = time.monotonic() - started
            print(runs[-1], flush=True)
    batch, mapped = runs
    speedup = mapped["wall_seconds"] / max(batch["wall_seconds"], 1e-9)
    worker_ratio = mapped["worker_cpu_seconds"] / max(batch["worker_cpu_seconds"], 1e-9)
    scheduler_ratio = mapped["scheduler_cpu_seconds"] / max(batch["scheduler_cpu_seconds"], 1e-9)
    rows = [
        f"| {r['way']} | {r['succeeded']}/{r['task_instances']} tasks, {r['outputs_stored']} outputs, "
        f"{r['submissions']} submits | {r['wall_seconds']:.0f} s | {r['worker_cpu_seconds']:.0f} s "
        f"| {r['task_instance_seconds']:.0f} s "
        f"| {r['scheduler_cpu_seconds']:.0f} s | {r['triggerer_cpu_seconds']:.0f} s "
        f"| {r['emulator_cpu_seconds']:.0f} s |"
        for r in runs
    ]
    table = "\n".join(
        [
            f"{COUNT} images on a real Airflow (LocalExecutor, PostgreSQL, separate processes): "
            "one batch task vs one mapped task per image",
            "",
            "| way | done | wall time | worker-seconds (CPU of workers + task processes) "
            "| task-instance seconds (Airflow's durations, waits included) | scheduler CPU | triggerer CPU "
            "| emulator CPU |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            f"| **mapped / batch** | | **{speedup:.1f}x** ({'met' if speedup >= 10 else 'NOT met'}; "
            f"goal >= 10x) | {worker_ratio:.1f}x | | {scheduler_ratio:.1f}x | | |",
        ]
    )
    write_result("airflow_scale", {"runs": runs, "machine": machine()}, table)
    return {"runs": runs}


if __name__ == "__main__":
    main()
