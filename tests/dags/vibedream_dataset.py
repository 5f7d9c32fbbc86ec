"""Test DAGs for the dataset layout in a real Airflow (tests/e2e/test_dataset_e2e.py): one deferrable
batch walking a local folder (``source``), staging its images under ``staging_path`` (an ``s3://``
prefix, moto's server in the test), storing each output at its input's relative path under
``output_path`` with a ``metadata.jsonl``. ``retries=1``: a try killed ``-9`` is retried once.
``fail_on_error=False``: the bad files of a folder do not fail the run, the manifest says why.

``vibedream_dataset_killed`` is the same batch on a connection of its own (``vibedream_killed``: an
emulator of its own in the test, whose submits are slowed), so the test kills its task while it
submits without slowing or miscounting the other DAG's runs, which go on at the same time."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG, Param

from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator

#: The operator's default patterns (the API's formats), and TIFF scans: the header check refuses
#: those, with the reason.
INCLUDE = ("*.jpg", "*.jpeg", "*.png", "*.gif", "*.webp", "*.tif", "*.tiff")

for dag_id, conn_id, concurrency in (
    ("vibedream_dataset", "vibedream_default", 4),
    ("vibedream_dataset_killed", "vibedream_killed", 2),
):
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        params={
            "source": Param("", type="string", description="a local folder of images"),
            "staging_path": Param("", type="string", description="s3:// prefix local images are staged at"),
            "output_path": Param("", type="string", description="the dataset folder"),
        },
    ):
        VibeDreamBatchUpscaleOperator(
            task_id="upscale",
            source="{{ params.source }}",
            include=INCLUDE,
            staging_path="{{ params.staging_path }}",
            output_layout="dataset",
            target_resolution="2k",
            output_format="jpeg",
            output_path="{{ params.output_path }}",
            vibedream_conn_id=conn_id,
            max_concurrency=concurrency,
            poll_interval=0.5,
            progress_interval=5,
            deferrable=True,
            fail_on_error=False,
            retries=1,
            retry_delay=timedelta(seconds=1),
        )
