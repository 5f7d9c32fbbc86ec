"""Where a finished prediction's outputs go: one path for the single-image operators and the batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.settings import ClientSettings
from airflow_vibedream.files.downloads import DownloadPolicy, is_non_public_host
from airflow_vibedream.files.inputs import probe_input
from airflow_vibedream.files.sources import dataset_name
from airflow_vibedream.files.storage import DEFAULT_OUTPUT_NAME, StoredOutput, persist_outputs
from airflow_vibedream.files.verify import Expectation, ImageFacts


def download_policy(settings: ClientSettings) -> DownloadPolicy:
    """The bounds of output downloads for a connection. Private destinations are allowed when the
    API itself is on one (the emulator, an in-cluster gateway) or the extra says so."""
    api_host = urlsplit(settings.base_url).hostname or ""
    return DownloadPolicy(
        max_bytes=settings.max_output_bytes,
        timeout=settings.download_timeout,
        read_timeout=settings.timeout,
        allow_private=settings.allow_private_outputs or is_non_public_host(api_host),
    )


@dataclass(frozen=True)
class OutputTarget:
    """Where and under which names outputs are stored.

    :param output_path: a local directory, ``file://``, ``s3://`` or any ObjectStoragePath URI.
    :param name_template: each output's name relative to ``output_path`` (fields ``dag_id``,
        ``run_id``, ``task_id``, ``map_suffix``, ``prediction_id``, ``index``, ``ext``).
    :param conn_id: the connection of ``output_path``'s store (None: local, or the store's default).
    """

    output_path: str
    name_template: str = DEFAULT_OUTPUT_NAME
    conn_id: str | None = None

    def store(
        self,
        prediction: Prediction,
        ti: Any,
        output_format: str | None,
        policy: DownloadPolicy,
        expectation: Expectation | None = None,
        fixed_name: str | None = None,
        input_name: str | None = None,
    ) -> list[StoredOutput]:
        """Persist every output of ``prediction`` for the task instance ``ti``, within ``policy``,
        each verified against ``expectation`` (None: not an image model's outputs, not judged);
        ``fixed_name``: the dataset layout's name instead of the template's; ``input_name``: the
        input's relative path or file name (the template's ``input_stem`` and ``input_path``)."""
        return self.store_outputs(
            prediction.outputs or [],
            prediction.id,
            ti,
            output_format,
            policy,
            expectation,
            fixed_name,
            input_name,
        )

    def store_outputs(
        self,
        outputs: list[str],
        name_id: str,
        ti: Any,
        output_format: str | None,
        policy: DownloadPolicy,
        expectation: Expectation | None = None,
        fixed_name: str | None = None,
        input_name: str | None = None,
    ) -> list[StoredOutput]:
        """Persist ``outputs`` (URLs or ``data:`` URIs) named by ``name_id`` in the template's
        ``prediction_id`` field (see :meth:`store`)."""
        return persist_outputs(
            outputs,
            self.output_path,
            names={
                "dag_id": ti.dag_id,
                "run_id": ti.run_id,
                "task_id": ti.task_id,
                "map_index": getattr(ti, "map_index", -1),
                "prediction_id": name_id,
                **input_fields(input_name),
            },
            output_format=output_format,
            name_template=self.name_template,
            conn_id=self.conn_id,
            policy=policy,
            check=None if expectation is None else _check(expectation),
            fixed_name=fixed_name,
        )


def input_fields(input_name: str | None) -> dict[str, str]:
    """The template's input fields: ``input_stem`` (the file name without its extension) and
    ``input_path`` (the relative path without it, each segment a plain name)."""
    if not input_name:
        return {}
    path = dataset_name(input_name, "x").removesuffix(".x")
    return {"input_stem": path.rsplit("/", 1)[-1], "input_path": path}


def _check(expectation: Expectation) -> Any:
    def check(width: int, height: int, image_format: str, where: str) -> list[str]:
        return expectation.verify(ImageFacts(width, height, image_format), where)

    return check


def input_facts(image: str, *, aws_conn_id: str | None, policy: DownloadPolicy) -> ImageFacts:
    """The input's header facts (refusing, before any request, an input the API would not accept)."""
    return ImageFacts(*probe_input(image, aws_conn_id=aws_conn_id, policy=policy))
