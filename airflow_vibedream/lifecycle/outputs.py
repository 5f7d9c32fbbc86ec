"""Where a finished prediction's outputs go: one path for the single-image operators and the batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.storage import DEFAULT_OUTPUT_NAME, StoredOutput, persist_outputs


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

    def store(self, prediction: Prediction, ti: Any, output_format: str | None) -> list[StoredOutput]:
        """Persist every output of ``prediction`` for the task instance ``ti``."""
        return persist_outputs(
            prediction.outputs or [],
            self.output_path,
            names={
                "dag_id": ti.dag_id,
                "run_id": ti.run_id,
                "task_id": ti.task_id,
                "map_index": getattr(ti, "map_index", -1),
                "prediction_id": prediction.id,
            },
            output_format=output_format,
            name_template=self.name_template,
            conn_id=self.conn_id,
        )
