"""Lineage: the declared outlet Asset of a fixed ``output_path``, and OpenLineage datasets naming the
input image and the stored outputs. OpenLineage is optional: without its provider, no facets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.sdk import Asset

from airflow_vibedream.files.storage import storage_uri


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


def lineage_for(
    input_uri: str | None, output_uris: list[str], files: Sequence[Mapping[str, Any]] | None = None
) -> Any:
    """The input and output datasets; a stored output carries its size (output statistics) and its
    verified format and pixel size (documentation facet)."""
    try:
        from airflow.providers.common.compat.openlineage.facet import (
            Dataset,
            DocumentationDatasetFacet,
            OutputDataset,
            OutputStatisticsOutputDatasetFacet,
        )
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:  # the OpenLineage provider is not installed: nothing to report
        return None

    def dataset(uri: str) -> Dataset:
        namespace, name = dataset_name(uri)
        return Dataset(namespace=namespace, name=name)

    facts = {str(item.get("uri")): item for item in files or []}

    def output(uri: str) -> Any:
        namespace, name = dataset_name(uri)
        item = facts.get(uri)
        if item is None:
            return OutputDataset(namespace=namespace, name=name)
        checks = ", ".join(item.get("checks") or []) or "none"
        return OutputDataset(
            namespace=namespace,
            name=name,
            facets={
                "documentation": DocumentationDatasetFacet(
                    description=f"{item.get('format')} image, {item.get('width')}x{item.get('height')} px "
                    f"(verified: {checks})"
                )
            },
            outputFacets={"outputStatistics": OutputStatisticsOutputDatasetFacet(size=item.get("bytes"))},
        )

    inputs = [dataset(input_uri)] if input_uri and not input_uri.startswith("data:") else []
    outputs = [output(uri) for uri in output_uris if not uri.startswith("data:")]
    return OperatorLineage(inputs=inputs, outputs=outputs)
