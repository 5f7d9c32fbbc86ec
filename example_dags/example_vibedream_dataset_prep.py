"""Prepare an ML dataset: list the input images, upscale them all, then read the manifest.

Two ways side by side: one ``VibeDreamBatchUpscaleOperator`` task (one trigger for all, a JSONL
manifest), and ``VibeDreamUpscaleImageOperator.partial(...).expand(image=...)`` (one mapped task per
image). For thousands of images the batch is the cheap one (see the README's benchmarks).

    airflow dags trigger example_vibedream_dataset_prep \
        -c '{"images": ["s3://my-bucket/raw/a.png", "s3://my-bucket/raw/b.png"], "output_path": "s3://my-bucket/train"}'
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, ObjectStoragePath, Param, task

from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

with DAG(
    dag_id="example_vibedream_dataset_prep",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "vibedream", "ml"],
    params={
        "images": Param([], type="array", description="image URLs or s3:// objects"),
        "sample_base": Param("", type="string", description="offline: an emulator URL to take samples from"),
        "count": Param(6, type="integer", minimum=1, description="offline: how many samples"),
        "output_path": Param("/tmp/vibedream-dataset", type="string"),
    },
) as dag:

    @task
    def list_inputs(params: dict[str, Any] | None = None) -> list[str]:
        """The images to prepare: the given list, or generated samples when developing offline."""
        params = params or {}
        if params.get("images"):
            return list(params["images"])
        return [f"{params['sample_base']}/samples/{320 + i}x240.png" for i in range(int(params["count"]))]

    inputs = list_inputs()

    batch = VibeDreamBatchUpscaleOperator(
        task_id="upscale_batch",
        images=inputs,
        target_resolution="2k",
        output_format="jpeg",
        output_path="{{ params.output_path }}/batch",
        max_concurrency=2,  # the vendor's lowest tier: 2 at once
        deferrable=True,
        poll_interval=1,
    )

    mapped = VibeDreamUpscaleImageOperator.partial(
        task_id="upscale_mapped",
        target_resolution="2k",
        output_format="jpeg",
        output_path="{{ params.output_path }}/mapped",
        deferrable=True,
        poll_interval=1,
    ).expand(image=inputs)

    @task
    def read_manifest(summary: dict[str, Any]) -> dict[str, Any]:
        """What a training job would do: read the manifest and keep the completed images."""
        lines = [json.loads(line) for line in ObjectStoragePath(summary["manifest"]).read_text().splitlines()]
        completed = [line for line in lines if line["status"] == "completed"]
        if len(completed) != summary["completed"]:
            raise ValueError(
                f"manifest lists {len(completed)} completed images, summary says {summary['completed']}"
            )
        print(f"{len(completed)} images ready for training, {summary['total_cost_cents']} cents spent")
        return {
            "ready": [line["outputs"][0] for line in completed],
            "cost_cents": summary["total_cost_cents"],
        }

    @task
    def count_mapped(results: list[dict[str, Any]]) -> int:
        return sum(1 for result in results if result["status"] == "completed")

    read_manifest(batch.output)
    count_mapped(mapped.output)
