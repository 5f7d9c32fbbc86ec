"""Test DAG for a batch task cleared while it is still submitting (tests/e2e/test_cleared_batch.py):
one deferrable batch over the run's ``images`` (a JSON list, given in the run's conf), writing to the
run's ``output`` folder, so the ledger beside the outputs is used."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG

from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator

with DAG(dag_id="vibedream_cleared_batch", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    VibeDreamBatchUpscaleOperator(
        task_id="batch",
        images="{{ dag_run.conf['images'] }}",  # a JSON list, as a string
        target_resolution="2k",
        output_format="jpeg",
        output_path="{{ dag_run.conf['output'] }}",
        max_concurrency=1,  # with the test's slow submits: ~0.5 s per job, so the clear lands mid-way
        poll_interval=0.5,
        deferrable=True,
        retries=2,
        retry_delay=timedelta(seconds=1),
    )
