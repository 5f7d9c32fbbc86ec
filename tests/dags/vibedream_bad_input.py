"""A test DAG whose upscale inputs all come from the run's conf, so tests can feed it bad values."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

with DAG(dag_id="vibedream_bad_input", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    VibeDreamUpscaleImageOperator(
        task_id="upscale",
        image="{{ dag_run.conf['image'] }}",
        target_resolution="{{ dag_run.conf['target_resolution'] }}",
        output_format="{{ dag_run.conf['output_format'] }}",
        deferrable=True,
    )
