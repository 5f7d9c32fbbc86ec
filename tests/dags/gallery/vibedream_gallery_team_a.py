"""Gallery test DAG of team A: one deferrable upscale into S3 (from an S3 input) and a deferrable
batch of three into a local folder, so the gallery has pairs, a batch and costs to show."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

with DAG(dag_id="vibedream_gallery_team_a", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    VibeDreamUpscaleImageOperator(
        task_id="upscale",
        image="{{ dag_run.conf['image'] }}",
        target_resolution="2k",
        output_format="png",
        output_path="{{ dag_run.conf['output_s3'] }}",
        poll_interval=0.5,
        deferrable=True,
    )
    VibeDreamBatchUpscaleOperator(
        task_id="batch",
        images="{{ dag_run.conf['batch'] | tojson }}",
        target_resolution="2k",
        output_format="jpeg",
        output_path="{{ dag_run.conf['output_local'] }}",
        poll_interval=0.5,
        progress_interval=1,
        deferrable=True,
    )

with DAG(dag_id="vibedream_gallery_progress", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    # One of its jobs never finishes (an emulator fault): the batch is seen running part-way done,
    # then its deadline ends it with a manifest (fail_on_error=False keeps the task green).
    VibeDreamBatchUpscaleOperator(
        task_id="batch",
        images="{{ dag_run.conf['batch'] | tojson }}",
        target_resolution="2k",
        output_format="png",
        output_path="{{ dag_run.conf['output_local'] }}",
        poll_interval=0.5,
        progress_interval=1,
        timeout=25,
        fail_on_error=False,
        deferrable=True,
    )
