"""Test DAGs for crash-safety: retried upscales (deferred and in-worker, storing into the run's
``output`` folder: on Airflow 3.1 and 3.2 the ledger there is what a retry reconnects through) and
many deferred upscales."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG, task

from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

COMMON = {
    "image": "{{ dag_run.conf['image'] }}",
    "output_path": "{{ dag_run.conf['output'] }}",
    "target_resolution": "2k",
    "output_format": "jpeg",
    "poll_interval": 1,
    "retries": 2,
    "retry_delay": timedelta(seconds=2),
}

with DAG(
    dag_id="vibedream_resume_deferred", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
) as resume_deferred:
    VibeDreamUpscaleImageOperator(task_id="upscale", deferrable=True, **COMMON)

with DAG(
    dag_id="vibedream_resume_worker", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
) as resume_worker:
    VibeDreamUpscaleImageOperator(task_id="upscale", deferrable=False, **COMMON)

with DAG(
    dag_id="vibedream_many_deferred",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_tasks=32,
):

    @task
    def images(dag_run=None) -> list[str]:  # type: ignore[no-untyped-def]
        # Mapped arguments are not templated, so the URLs are built by a task from the run's conf.
        return [f"{dag_run.conf['base']}/samples/{64 + i}x64.png" for i in range(20)]

    VibeDreamUpscaleImageOperator.partial(
        task_id="upscale",
        target_resolution="2k",
        output_format="jpeg",
        poll_interval=1,
        deferrable=True,
        retries=1,
    ).expand(image=images())
