"""Test DAGs for the distributed suite: mapped deferrable upscales and one batch, outputs in S3."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG, task

from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

START = datetime(2026, 1, 1)

with DAG(
    dag_id="vibedream_distributed_mapped", schedule=None, start_date=START, catchup=False, max_active_tasks=64
):

    @task
    def images(dag_run=None) -> list[str]:  # type: ignore[no-untyped-def]
        return [f"{dag_run.conf['base']}/samples/{32 + i}x24.png" for i in range(int(dag_run.conf["count"]))]

    VibeDreamUpscaleImageOperator.partial(
        task_id="upscale",
        target_resolution="2k",
        output_format="png",
        output_path="{{ dag_run.conf['output'] }}",
        poll_interval=1,
        deferrable=True,
        retries=2,
        retry_delay=timedelta(seconds=2),
    ).expand(image=images())

with DAG(dag_id="vibedream_distributed_batch", schedule=None, start_date=START, catchup=False):
    VibeDreamBatchUpscaleOperator(
        task_id="batch",
        images="{{ dag_run.conf['images'] }}",  # a JSON list, as a string
        target_resolution="2k",
        output_format="jpeg",
        output_path="{{ dag_run.conf['output'] }}",
        max_concurrency=8,
        poll_interval=1,
        deferrable=True,
        retries=2,
        retry_delay=timedelta(seconds=2),
    )
