"""Test DAGs for per-trigger logs (tests/e2e/test_known_bad_e2e.py): two DAGs, each a deferrable
single-image upscale of the image in its run's conf, so two DAGs' triggers wait in one triggerer (and
one shared poll scheduler) at the same time."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

for dag_id in ("vibedream_trigger_logs_a", "vibedream_trigger_logs_b"):
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
        VibeDreamUpscaleImageOperator(
            task_id="upscale",
            image="{{ dag_run.conf['image'] }}",
            target_resolution="2k",
            output_format="jpeg",
            poll_interval=0.5,
            deferrable=True,
        )
