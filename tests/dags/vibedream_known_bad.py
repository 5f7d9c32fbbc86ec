"""Test DAG for an input that fails for good (tests/e2e/test_known_bad_e2e.py): a deferrable batch over
an S3 prefix (moto's server) holding one good image and one truncated PNG. ``retries=2``: a run that
fails after one try failed for good (AirflowFailException), not for want of retries."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG

from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator

BUCKET = "known-bad-e2e"

with DAG(
    dag_id="vibedream_known_bad",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
):
    VibeDreamBatchUpscaleOperator(
        task_id="upscale",
        s3_prefix=f"s3://{BUCKET}/in/",
        target_resolution="2k",
        output_format="jpeg",
        output_path=f"s3://{BUCKET}/out",
        max_concurrency=2,
        poll_interval=0.5,
        deferrable=True,
        retries=2,
        retry_delay=timedelta(seconds=1),
    )
