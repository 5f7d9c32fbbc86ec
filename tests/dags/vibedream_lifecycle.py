"""Test DAGs for the job lifecycle in a real Airflow: clears after the input changed, a batch cut by
its execution_timeout, and failures that must not be retried."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG, Variable, task

from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

START = datetime(2026, 1, 1)

with DAG(dag_id="vibedream_lifecycle_single", schedule=None, start_date=START, catchup=False):
    # The resolution is read from a Variable at render time, so a clear after it changed asks anew.
    VibeDreamUpscaleImageOperator(
        task_id="upscale",
        image="{{ dag_run.conf['image'] }}",
        target_resolution="{{ var.value.vibedream_e2e_resolution }}",
        output_format="png",
        output_path="{{ dag_run.conf['output'] }}",
        poll_interval=0.5,
        deferrable=True,
        retries=2,
        retry_delay=timedelta(seconds=1),
    )

with DAG(dag_id="vibedream_lifecycle_mapped", schedule=None, start_date=START, catchup=False):

    @task
    def images() -> list[str]:
        # The upstream list comes from a Variable, so it can change between a run and its clear.
        return list(Variable.get("vibedream_e2e_images", deserialize_json=True))

    VibeDreamUpscaleImageOperator.partial(
        task_id="upscale",
        target_resolution="2k",
        output_format="png",
        output_path="{{ dag_run.conf['output'] }}",
        poll_interval=0.5,
        deferrable=True,
    ).expand(image=images())

with DAG(dag_id="vibedream_lifecycle_batch", schedule=None, start_date=START, catchup=False):
    VibeDreamBatchUpscaleOperator(
        task_id="batch",
        images="{{ dag_run.conf['images'] }}",  # a JSON list, as a string
        target_resolution="2k",
        output_format="jpeg",
        output_path="{{ dag_run.conf['output'] }}",
        max_concurrency=2,
        poll_interval=0.5,
        deferrable=False,
        # Long enough for the fast retry on a loaded CI machine, far too short for the slow first try.
        execution_timeout=timedelta(seconds=12),
        retries=2,
        retry_delay=timedelta(seconds=1),
    )
