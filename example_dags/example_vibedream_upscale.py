"""Upscale one image with VibeDream, deferrably, then check the result in a downstream task.

Run it against the offline emulator with ``make demo``, or against the real API by creating the
``vibedream_default`` connection and triggering the DAG with your own image URL:

    airflow dags trigger example_vibedream_upscale \
        -c '{"image": "https://example.com/photo.jpg", "target_resolution": "4k", "output_format": "png"}'
"""

from __future__ import annotations

import io
import os
from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, ObjectStoragePath, Param, task

from airflow_vibedream.constants import TARGET_RESOLUTIONS
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

with DAG(
    dag_id="example_vibedream_upscale",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "vibedream"],
    params={
        "image": Param(
            os.environ.get("VIBEDREAM_EXAMPLE_IMAGE_URL", "https://example.com/your-image.jpg"),
            type="string",
            description="http(s) URL of the image to upscale",
        ),
        "target_resolution": Param("2k", enum=list(TARGET_RESOLUTIONS)),
        "output_format": Param("png", enum=["jpeg", "png", "webp"]),
        "output_path": Param(
            os.environ.get("VIBEDREAM_EXAMPLE_OUTPUT_PATH", ""),
            type="string",
            description="directory or object-store URI for the result; empty keeps the API's download URL",
        ),
    },
) as dag:
    upscale = VibeDreamUpscaleImageOperator(
        task_id="upscale",
        image="{{ params.image }}",
        target_resolution="{{ params.target_resolution }}",
        output_format="{{ params.output_format }}",
        output_path="{{ params.output_path }}",
        deferrable=True,
        poll_interval=1,
    )

    @task
    def check_upscaled_image(result: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Open the upscaled image (stored file or download URL) and check its size and format."""
        import httpx
        from PIL import Image

        params = params or {}
        output = result["outputs"][0]
        if output.startswith(("http://", "https://")):
            data = httpx.get(output, timeout=60, follow_redirects=True).raise_for_status().content
        else:
            data = ObjectStoragePath(output).read_bytes()
        image = Image.open(io.BytesIO(data))
        expected_long_edge = TARGET_RESOLUTIONS[params.get("target_resolution", "2k")]
        expected_format = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[params.get("output_format", "png")]
        if max(image.size) != expected_long_edge or image.format != expected_format:
            raise ValueError(
                f"{output}: got {image.format} {image.size[0]}x{image.size[1]}, "
                f"expected {expected_format} with a long edge of {expected_long_edge} px"
            )
        print(f"Upscaled image: {output} ({image.size[0]}x{image.size[1]} {image.format})")
        return {"output": output, "width": image.size[0], "height": image.size[1], "format": image.format}

    check_upscaled_image(upscale.output)
