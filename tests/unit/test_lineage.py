"""Lineage: a fixed output_path is an outlet Asset; OpenLineage datasets name the input and outputs."""

from __future__ import annotations

from unittest import mock

from airflow_vibedream.client import ClientSettings
from airflow_vibedream.files.storage import StoredOutput
from airflow_vibedream.operators.lineage import dataset_name
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator
from tests.helpers import COMPLETED, FakeTI


def upscale(**kwargs: object) -> VibeDreamUpscaleImageOperator:
    return VibeDreamUpscaleImageOperator(
        task_id="upscale",
        image="s3://raw/in/photo.png",
        target_resolution="2k",
        output_format="png",
        **kwargs,
    )


def test_static_output_path_is_an_outlet_asset() -> None:
    [asset] = upscale(output_path="s3://bucket/upscaled/").outlets
    assert asset.uri == "s3://bucket/upscaled"


def test_templated_output_path_declares_no_asset() -> None:
    assert upscale(output_path="{{ params.out }}").outlets == []


def test_openlineage_names_input_and_stored_outputs() -> None:
    task = upscale(output_path="s3://bucket/upscaled")
    checks = ("complete", "decodes", "format", "long_edge", "aspect")
    stored = [StoredOutput("s3://bucket/upscaled/a.png", 10, "00", 2048, 1024, "PNG", checks)]
    with (
        mock.patch("airflow_vibedream.hooks.vibedream.VibeDreamHook.get_conn") as get_conn,
        mock.patch("airflow_vibedream.files.outputs.persist_outputs", return_value=stored),
        mock.patch(
            "airflow_vibedream.operators.vibedream.resolve_image", return_value="https://signed.example/x"
        ),
    ):
        get_conn.return_value.submit.return_value = COMPLETED
        get_conn.return_value.settings = ClientSettings(api_key="k", base_url="http://127.0.0.1:9")
        task.execute({"ti": FakeTI()})
    lineage = task.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://raw", "in/photo.png")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("s3://bucket", "upscaled/a.png")]
    [output] = lineage.outputs  # the stored file's size and verified format travel with it
    assert output.outputFacets["outputStatistics"].size == 10
    assert output.facets["documentation"].description == (
        "PNG image, 2048x1024 px (verified: complete, decodes, format, long_edge, aspect)"
    )


def test_dataset_names() -> None:
    assert dataset_name("file:///data/out/a.png") == ("file", "/data/out/a.png")
    assert dataset_name("https://cdn.example.com/a/b.jpg") == ("https://cdn.example.com", "a/b.jpg")
