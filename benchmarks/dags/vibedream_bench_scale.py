"""The two ways to upscale N images, for `make bench` (airflow_scale): one batch task, or N mapped
tasks. Both take the same inputs from the run's conf and store every output under the same kind of
path, so the difference measured is the orchestration, not the work."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

COMMON: dict[str, Any] = {
    "target_resolution": "2k",
    "output_format": "jpeg",
    "output_path": "{{ dag_run.conf['output_path'] }}/{{ dag.dag_id }}",
    "deferrable": True,
}


@task
def images(dag_run: Any = None) -> list[str]:
    """N distinct small inputs served by the emulator (mapped arguments are not templated, so a task
    builds the list)."""
    base, count = dag_run.conf["base"], int(dag_run.conf["count"])
    return [f"{base}/samples/{64 + i % 100}x{48 + i // 100}.png" for i in range(count)]


with DAG(
    dag_id="vibedream_bench_batch",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_tasks=64,
):
    VibeDreamBatchUpscaleOperator(task_id="upscale", images=images(), max_concurrency=16, **COMMON)

with DAG(
    dag_id="vibedream_bench_mapped",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_tasks=64,
):
    VibeDreamUpscaleImageOperator.partial(task_id="upscale", **COMMON).expand(image=images())
