"""Images in and out of S3: upscale an ``s3://`` image (presigned for VibeDream) into an ``s3://``
prefix, as base64 so no temporary download link is involved, then read the stored result back.

Needs the ``aws_default`` connection (and ``vibedream_default``). Trigger it with your objects:

    airflow dags trigger example_vibedream_s3 \
        -c '{"image": "s3://my-bucket/raw/photo.png", "output_path": "s3://my-bucket/upscaled"}'
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, ObjectStoragePath, Param, task

from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

with DAG(
    dag_id="example_vibedream_s3",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "vibedream", "s3"],
    params={
        "image": Param("s3://my-bucket/raw/photo.png", type="string", description="s3:// or http(s) image"),
        "output_path": Param("s3://my-bucket/upscaled", type="string", description="where results go"),
        "target_resolution": Param("4k", enum=["2k", "4k", "8k"]),
    },
) as dag:
    upscale = VibeDreamUpscaleImageOperator(
        task_id="upscale",
        image="{{ params.image }}",
        target_resolution="{{ params.target_resolution }}",
        output_format="webp",
        enable_base64_output=True,  # decoded straight into output_path; never through XCom
        output_path="{{ params.output_path }}",
        aws_conn_id="aws_default",
        deferrable=True,
        poll_interval=1,
    )

    @task
    def summarize(result: dict[str, Any]) -> dict[str, Any]:
        """Read each stored image's size back from the object store and report it with its checksum."""
        report = []
        for stored in result["files"]:
            path = ObjectStoragePath(stored["uri"], conn_id="aws_default")
            size = path.stat()["size"] if hasattr(path.stat(), "__getitem__") else path.stat().st_size
            if size != stored["bytes"]:
                raise ValueError(f"{stored['uri']}: {size} bytes in the store, {stored['bytes']} written")
            report.append({"uri": stored["uri"], "sha256": stored["sha256"], "width": stored["width"]})
        print(f"Upscaled into the object store: {report}")
        return {"outputs": report, "cost_cents": result["cost_cents"]}

    summarize(upscale.output)
