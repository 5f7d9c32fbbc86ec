"""Extra links test DAG: a deferrable upscale and a deferrable batch, both into a local folder."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

with DAG(dag_id="vibedream_links", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    VibeDreamUpscaleImageOperator(
        task_id="upscale",
        image="{{ dag_run.conf['image'] }}",
        target_resolution="2k",
        output_format="png",
        output_path="{{ dag_run.conf['output'] }}",
        poll_interval=0.5,
        deferrable=True,
    )
    VibeDreamBatchUpscaleOperator(
        task_id="batch",
        images="{{ dag_run.conf['batch'] | tojson }}",
        target_resolution="2k",
        output_format="webp",
        output_path="{{ dag_run.conf['output'] }}",
        poll_interval=0.5,
        deferrable=True,
    )
