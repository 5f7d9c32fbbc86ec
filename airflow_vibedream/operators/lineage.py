"""Lineage: the declared outlet Asset of a fixed ``output_path``, and OpenLineage datasets naming the
input image and the stored outputs. OpenLineage is optional: without its provider, no facets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.sdk import Asset

from airflow_vibedream.storage import storage_uri


def output_asset(output_path: str) -> Asset:
    return Asset(uri=storage_uri(output_path).rstrip("/"))


def input_image_of(model_input: Any) -> str | None:
    value = model_input.get("image") if isinstance(model_input, Mapping) else None
    return value if isinstance(value, str) else None


def dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage naming: ``s3://bucket`` + key, ``file`` + path, ``https://host`` + path."""
    parts = urlsplit(uri)
    if parts.scheme == "file" or not parts.scheme:
        return "file", parts.path or uri
    return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/") or "/"


def lineage_for(input_uri: str | None, output_uris: list[str]) -> Any:
    try:
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:  # the OpenLineage provider is not installed: nothing to report
        return None

    def dataset(uri: str) -> Dataset:
        namespace, name = dataset_name(uri)
        return Dataset(namespace=namespace, name=name)

    inputs = [dataset(input_uri)] if input_uri and not input_uri.startswith("data:") else []
    outputs = [dataset(uri) for uri in output_uris if not uri.startswith("data:")]
    return OperatorLineage(inputs=inputs, outputs=outputs)
