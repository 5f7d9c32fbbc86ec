"""The dataset recipe: a folder of images in, a training set out, paid once per image.

One ``VibeDreamBatchUpscaleOperator`` walks a local folder (or an ``s3://`` prefix), stages the
local images where the API can fetch them (``staging_path``), and stores every output at its input's
relative path under ``output_path`` with a ``metadata.jsonl`` (Hugging Face ImageFolder), so
``output_path`` *is* the dataset. A downstream task loads that index and splits it into train and
validation by content hash: the same image always lands in the same split, run after run. Run it
again: images already done are reused (nothing paid), new ones are added, changed ones replaced.

    airflow dags trigger example_vibedream_dataset_prep -c '{"source": "/data/raw",
        "staging_path": "s3://my-bucket/vibedream-staging", "output_path": "/data/train-2k"}'

Offline, with no folder given, it takes ``count`` generated samples from the emulator instead
(``sample_base``: the emulator's URL), which need no staging.

    from datasets import load_dataset
    ds = load_dataset("imagefolder", data_dir="/data/train-2k")
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, ObjectStoragePath, Param, task

from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator

with DAG(
    dag_id="example_vibedream_dataset_prep",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "vibedream", "ml"],
    params={
        "source": Param("", type="string", description="a local folder or an s3:// prefix of images"),
        "staging_path": Param("", type="string", description="s3:// prefix for local images (staged)"),
        "output_path": Param("/tmp/vibedream-dataset", type="string", description="the dataset folder"),
        "validation_percent": Param(20, type="integer", minimum=0, maximum=100),
        "sample_base": Param("", type="string", description="offline: an emulator URL to take samples from"),
        "count": Param(6, type="integer", minimum=1, description="offline: how many samples"),
    },
) as dag:

    @task
    def images_to_prepare(params: dict[str, Any] | None = None) -> str | list[str]:
        """The folder or prefix to walk; offline, a list of the emulator's generated samples."""
        params = params or {}
        if params.get("source"):
            return str(params["source"])
        return [f"{params['sample_base']}/samples/{320 + i}x240.png" for i in range(int(params["count"]))]

    upscale = VibeDreamBatchUpscaleOperator(
        task_id="upscale_dataset",
        source=images_to_prepare(),
        staging_path="{{ params.staging_path }}",
        output_layout="dataset",
        target_resolution="2k",
        output_format="png",
        output_path="{{ params.output_path }}",
        max_concurrency=2,  # the vendor's lowest tier: 2 at once
        deferrable=True,
        poll_interval=1,
        fail_on_error=False,  # a few bad files must not stop the dataset: the manifest says why
    )

    @task
    def split(summary: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a training job does first: load the index and split it, deterministically, by the
        input's content hash (the same image lands in the same split on every run)."""
        params = params or {}
        rows = [json.loads(line) for line in ObjectStoragePath(summary["metadata"]).read_text().splitlines()]
        percent = int(params.get("validation_percent", 20))
        train, validation = [], []
        for row in rows:
            content = row["input_sha256"] or row["output_sha256"]
            (validation if int(content[:8], 16) % 100 < percent else train).append(row["file_name"])
        print(
            f"{len(rows)} images in the dataset ({len(train)} train, {len(validation)} validation); "
            f"this run paid {summary['total_cost_cents']} cents; by status: {summary['by_status']}"
        )
        return {
            "train": sorted(train),
            "validation": sorted(validation),
            "cost_cents": summary["total_cost_cents"],
        }

    split(upscale.output)
