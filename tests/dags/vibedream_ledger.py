"""Test DAGs for the ledger in a real Airflow: a daily batch over a growing S3 prefix (each day's
run waits for that day's ``ready/<ds>`` marker, as pipelines wait for their data), a manual batch
over the same prefix writing to the same ``output_path``, and single-image upscales whose submit a
test interrupts (with and without ``resubmit_unknown``)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.providers.common.compat.sdk import DAG

from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

BUCKET = "ledger-e2e"
BATCH = {
    "s3_prefix": f"s3://{BUCKET}/in/",
    "target_resolution": "{{ params.resolution }}",
    "output_format": "jpeg",
    "output_path": f"s3://{BUCKET}/out",
    "max_concurrency": 4,
    "poll_interval": 1,
    "deferrable": True,
}

with DAG(
    dag_id="vibedream_ledger_daily",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    end_date=datetime(2026, 1, 3),
    catchup=True,
    max_active_runs=1,
    params={"resolution": "2k"},
):
    S3KeySensor(
        task_id="day_landed",
        bucket_key=f"s3://{BUCKET}/ready/{{{{ ds }}}}",
        poke_interval=1,
        timeout=900,
        mode="poke",
    ) >> VibeDreamBatchUpscaleOperator(task_id="upscale", **BATCH)

with DAG(
    dag_id="vibedream_ledger_manual",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"resolution": "2k"},
):
    VibeDreamBatchUpscaleOperator(task_id="upscale", **BATCH)

for dag_id, resubmit, output_path in (
    ("vibedream_ledger_inflight", False, f"s3://{BUCKET}/out"),
    ("vibedream_ledger_inflight_resubmit", True, f"s3://{BUCKET}/out"),
    # No ledger: on Airflow 3.3+ the task's own state store holds the intent.
    ("vibedream_ledger_inflight_no_output", False, None),
):
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
        VibeDreamUpscaleImageOperator(
            task_id="upscale",
            image=f"s3://{BUCKET}/single/{{{{ dag_run.conf['name'] }}}}",
            target_resolution="2k",
            output_format="jpeg",
            output_path=output_path,
            poll_interval=1,
            deferrable=False,
            retries=1,
            retry_delay=timedelta(seconds=1),
            resubmit_unknown=resubmit,
        )
