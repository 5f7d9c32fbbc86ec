"""A local folder in, a dataset folder out: the batch walks a local tree, stages what the API cannot
fetch (moto's S3 in server mode), stores each output at its input's mirrored path, writes
``metadata.jsonl``, and pays once per image across runs (the emulator over real HTTP)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from PIL import Image

from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.emulator.imaging import sample_image
from airflow_vibedream.errors import VibeDreamValidationError
from airflow_vibedream.files.sources import dataset_names
from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from tests.conftest import MotoS3
from tests.helpers import FakeTI
from tests.integration.emulated import jobs


def tree(root: Path) -> dict[str, bytes]:
    """A small source tree: nested folders, three formats, a name with spaces and accents, a TIFF
    and a zero-byte file (both skipped, with their reasons)."""
    files = {
        "cats/a.png": sample_image(64, 48, "PNG"),
        "cats/b.jpg": sample_image(60, 40, "JPEG"),
        "dogs/deep/c.webp": sample_image(50, 50, "WEBP"),
        "dogs/mon chien é.png": sample_image(40, 30, "PNG"),
        "big/large.jpg": sample_image(2500, 1400, "JPEG"),  # above 2k already: resized locally
        "empty.png": b"",
    }
    tiff = io.BytesIO()
    Image.new("RGB", (40, 30)).save(tiff, "TIFF")
    files["scans/scan.png"] = tiff.getvalue()  # a TIFF under an image name
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def dataset_batch(source: Path, output: Path, s3: MotoS3, **kwargs: Any) -> VibeDreamBatchUpscaleOperator:
    values: dict[str, Any] = {
        "task_id": "batch",
        "source": str(source),
        "staging_path": f"s3://{s3.bucket}/staging",
        "output_layout": "dataset",
        "target_resolution": "2k",
        "output_format": "png",
        "output_path": str(output),
        "max_concurrency": 2,
        "poll_interval": 0.1,
        "deferrable": False,
        "fail_on_error": False,
        **kwargs,
    }
    return VibeDreamBatchUpscaleOperator(**values)


def run(task: VibeDreamBatchUpscaleOperator, run_id: str) -> dict[str, Any]:
    ti = FakeTI()
    ti.run_id = run_id
    return dict(task.execute({"ti": ti}))


def metadata(output: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output / "metadata.jsonl").read_text().splitlines()]


def staged(s3: MotoS3) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="staging/")
    return [item["Key"] for item in listed.get("Contents", [])]


def test_a_local_folder_becomes_a_dataset_folder_paid_once(
    vibedream_conn: EmulatorServer, moto_s3: MotoS3, tmp_path: Path
) -> None:
    source, output = tmp_path / "raw", tmp_path / "dataset"
    tree(source)
    first = run(dataset_batch(source, output, moto_s3), "scheduled__1")
    assert jobs(vibedream_conn) == 4 and first["completed"] == 4 and first["skipped"] == 2
    assert first["resized_locally"] == 1 and first["total_cost_cents"] == 8
    assert first["reasons"] == {
        "skipped: image <image> is a TIFF image; VibeDream accepts JPEG, PNG, GIF or WebP images": 1,
        "skipped: image <image> is empty (0 bytes); VibeDream accepts JPEG, PNG, GIF or WebP images": 1,
    }
    present = sorted(
        p.relative_to(output).as_posix() for p in output.rglob("*.png") if "_vibedream" not in str(p)
    )
    assert present == ["big/large.png", "cats/a.png", "cats/b.png", "dogs/deep/c.png", "dogs/mon chien é.png"]
    lines = metadata(output)
    assert sorted(line["file_name"] for line in lines) == present
    for line in lines:
        stored = Image.open(output / line["file_name"])
        assert (line["width"], line["height"]) == stored.size and max(stored.size) == 2048
        if line["file_name"] == "big/large.png":  # resized here: no job, nothing paid
            assert (line["cost_cents"], line["prediction_id"], stored.size) == (0, None, (2048, 1147))
            continue
        assert line["model"] == "image-upscaler" and line["cost_cents"] == 2 and line["prediction_id"]
        assert len(line["input_sha256"]) == 64 and len(line["output_sha256"]) == 64
    assert staged(moto_s3) == []  # every staged copy deleted once the jobs ended

    second = run(dataset_batch(source, output, moto_s3), "scheduled__2")
    assert jobs(vibedream_conn) == 4 and second["reused"] == 4 and second["total_cost_cents"] == 0
    assert second["resized_locally"] == 1
    assert sorted(line["file_name"] for line in metadata(output)) == present

    (source / "cats/new.png").write_bytes(sample_image(30, 20, "PNG"))
    (source / "cats/a.png").write_bytes(sample_image(66, 44, "PNG"))  # changed in place
    before = (output / "cats/a.png").read_bytes()
    third = run(dataset_batch(source, output, moto_s3), "scheduled__3")
    assert jobs(vibedream_conn) == 6 and third["completed"] == 2 and third["reused"] == 3
    assert (output / "cats/a.png").read_bytes() != before and (output / "cats/new.png").is_file()
    assert len(metadata(output)) == 6


def test_local_images_without_staging_path_are_refused_before_any_request(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    (tmp_path / "a.png").write_bytes(sample_image(20, 20, "PNG"))
    task = VibeDreamBatchUpscaleOperator(
        task_id="batch",
        source=str(tmp_path),
        target_resolution="2k",
        output_format="png",
        output_path=str(tmp_path / "out"),
        deferrable=False,
    )
    with pytest.raises(AirflowFailException, match="staging_path") as raised:
        task.execute({"ti": FakeTI()})
    assert isinstance(raised.value.__cause__, VibeDreamValidationError)
    assert raised.value.__cause__.field == "staging_path"
    assert jobs(vibedream_conn) == 0


def test_colliding_names_are_resolved_the_same_way_every_run() -> None:
    names = dataset_names(
        ["a.jpg", "a.png", "A.webp", "b/c.gif", "../x.png", "_vibedream_ledger/y.png"], "png"
    )
    # Compared without letter case (case-insensitive file systems); the first in sorted order keeps
    # the plain name, the others keep their own extension too.
    assert names["A.webp"] == "A.png"
    assert names["a.jpg"] == "a.jpg.png" and names["a.png"] == "a.png.png"
    assert names["b/c.gif"] == "b/c.png"
    assert ".." not in names["../x.png"].split("/") and not names["_vibedream_ledger/y.png"].startswith("_")


def test_the_per_run_layout_names_outputs_by_their_input(
    vibedream_conn: EmulatorServer, moto_s3: MotoS3, tmp_path: Path
) -> None:
    source, output = tmp_path / "raw", tmp_path / "out"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "photo one.png").write_bytes(sample_image(40, 30, "PNG"))
    task = dataset_batch(
        source,
        output,
        moto_s3,
        output_layout="per_run",
        output_name_template="{run_id}/{input_path}-{index}.{ext}",
    )
    run(task, "run1")
    assert (output / "run1" / "sub" / "photo one-0.png").is_file()
    assert not (output / "metadata.jsonl").exists()  # only the dataset layout writes the index
