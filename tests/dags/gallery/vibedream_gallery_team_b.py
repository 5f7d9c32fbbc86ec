"""Gallery test DAG of team B: never run; it exists so that team B's user has a DAG of their own."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

with DAG(dag_id="vibedream_gallery_team_b", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    VibeDreamUpscaleImageOperator(
        task_id="upscale", image="s3://team-b/input.png", target_resolution="2k", output_format="png"
    )
