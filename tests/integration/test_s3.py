"""Images in and out of S3 through moto's server mode (real HTTP): presigned inputs fetched by the
emulator, streamed atomic outputs byte-identical to what the emulator served, base64 kept out of XCom."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.emulator.imaging import sample_image
from airflow_vibedream.errors import OutputStorageError
from airflow_vibedream.files.downloads import DownloadPolicy
from airflow_vibedream.files.inputs import resolve_image
from airflow_vibedream.files.storage import persist_outputs
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator
from tests.conftest import MotoS3
from tests.helpers import FakeTI


def put_sample(s3: MotoS3, key: str, width: int = 320, height: int = 200) -> bytes:
    data = sample_image(width, height, "PNG")
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=data)
    return data


def s3_object(s3: MotoS3, uri: str) -> bytes:
    key = uri.removeprefix(f"s3://{s3.bucket}/")
    return bytes(s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read())


def emulator_file(emulator: EmulatorServer, prediction_id: str) -> bytes:
    [path] = (emulator.data_dir / prediction_id).iterdir()
    return path.read_bytes()


def test_presigned_input_is_fetchable_without_credentials(moto_s3: MotoS3) -> None:
    data = put_sample(moto_s3, "raw/photo.png")
    url = resolve_image(f"s3://{moto_s3.bucket}/raw/photo.png", aws_conn_id="aws_default", expires_in=600)
    assert (url.startswith(moto_s3.endpoint) and "Signature" in url) or "X-Amz-Signature" in url
    assert httpx.get(url).content == data


@pytest.mark.parametrize(
    "image", ["ftp://host/a.png", "gs://bucket/a.png", "s3://bucket-only", "s3://b/dir/"]
)
def test_other_schemes_are_refused_before_any_request(image: str, vibedream_conn: EmulatorServer) -> None:
    with pytest.raises(ValueError, match="image must be"):
        VibeDreamUpscaleImageOperator(task_id="t", image=image, target_resolution="2k", output_format="png")
    assert vibedream_conn.state.counters["requests"] == 0


def run_operator(task: VibeDreamUpscaleImageOperator) -> dict[str, Any]:
    return task.execute({"ti": FakeTI()})


def test_s3_in_s3_out_byte_identical(moto_s3: MotoS3, vibedream_conn: EmulatorServer) -> None:
    put_sample(moto_s3, "raw/photo.png")
    result = run_operator(
        VibeDreamUpscaleImageOperator(
            task_id="upscale",
            image=f"s3://{moto_s3.bucket}/raw/photo.png",
            target_resolution="2k",
            output_format="png",
            output_path=f"s3://{moto_s3.bucket}/upscaled",
            deferrable=False,
            poll_interval=0.1,
        )
    )
    [stored] = result["files"]
    assert result["outputs"] == [stored["uri"]]
    assert stored["uri"] == f"s3://{moto_s3.bucket}/upscaled/dag/manual__1/upscale/{result['id']}-0.png"
    served = emulator_file(vibedream_conn, result["id"])
    in_s3 = s3_object(moto_s3, stored["uri"])
    assert hashlib.sha256(in_s3).hexdigest() == hashlib.sha256(served).hexdigest() == stored["sha256"]
    assert (stored["bytes"], stored["width"], stored["height"], stored["format"]) == (
        len(served),
        2048,
        1280,
        "PNG",
    )
    assert Image.open(io.BytesIO(in_s3)).size == (2048, 1280)


def test_base64_output_lands_in_s3_and_never_in_xcom(moto_s3: MotoS3, vibedream_conn: EmulatorServer) -> None:
    put_sample(moto_s3, "raw/photo-b64.png")
    ti = FakeTI()
    result = VibeDreamUpscaleImageOperator(
        task_id="upscale",
        image=f"s3://{moto_s3.bucket}/raw/photo-b64.png",
        target_resolution="2k",
        output_format="webp",
        enable_base64_output=True,
        enable_sync_mode=True,
        output_path=f"s3://{moto_s3.bucket}/b64",
    ).execute({"ti": ti})
    [stored] = result["files"]
    assert s3_object(moto_s3, stored["uri"]) == emulator_file(vibedream_conn, result["id"])
    assert stored["format"] == "WEBP"
    assert len(repr(result)) < 2000 and "base64" not in repr(result) and "base64" not in repr(ti.xcom)


@pytest.mark.parametrize("destination", ["s3", "local"])
def test_interrupted_download_leaves_nothing_behind(
    destination: str, moto_s3: MotoS3, vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    # A large output, so the S3 upload is multipart and has parts in flight when the drop comes.
    image = f"{vibedream_conn.base_url}/samples/1000x600.png?noise=true"
    submitted = httpx.post(
        f"{vibedream_conn.base_url}/api/v1/models/image-upscaler/generate",
        json={"image": image, "target_resolution": "8k", "output_format": "png", "enable_sync_mode": True},
        headers={"Authorization": "Bearer test-key-7f3a9c1e5b"},
        timeout=120,
    ).json()
    size = len(emulator_file(vibedream_conn, submitted["id"]))
    assert size > 12 * 1024 * 1024, size
    rule = {"route": "output", "kind": "drop", "after_bytes": size // 2}
    httpx.post(f"{vibedream_conn.base_url}/_emulator/faults", json={"rules": [rule]}).raise_for_status()
    output_path = f"s3://{moto_s3.bucket}/interrupted" if destination == "s3" else str(tmp_path / "out")
    with pytest.raises(OutputStorageError, match="failed"):
        persist_outputs(
            submitted["outputs"],
            output_path,
            names={"dag_id": "d", "run_id": "r", "task_id": "t", "prediction_id": submitted["id"]},
            output_format="png",
            conn_id="aws_default",
            policy=DownloadPolicy(allow_private=True),  # the emulator is on loopback
        )
    if destination == "s3":
        assert moto_s3.keys("interrupted") == []
        assert moto_s3.client().list_multipart_uploads(Bucket=moto_s3.bucket).get("Uploads", []) == []
    else:
        assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
