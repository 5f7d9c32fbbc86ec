"""What the operators leave behind for the gallery: one small XCom per finished image and one
progress XCom per batch. Both are plain JSON dicts of a few hundred bytes; images never go
through XCom, only where they are stored."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: XCom key of a finished single-image task's gallery record (see :func:`image_record`).
RESULT_XCOM_KEY = "vibedream_result"
#: XCom key of a batch's progress, rewritten while it runs and once at the end.
PROGRESS_XCOM_KEY = "vibedream_batch_progress"

#: Batch progress states.
RUNNING = "running"
FINISHED = "finished"


def image_record(
    *,
    prediction: Mapping[str, Any],
    asked: Mapping[str, Any],
    files: list[Mapping[str, Any]] | None,
    input_conn_id: str | None,
    output_conn_id: str | None,
    vibedream_conn_id: str,
) -> dict[str, Any]:
    """The gallery record of one finished prediction.

    :param prediction: the operator's result (``id``, ``model_id``, ``outputs``, ``cost_cents``,
        ``created_at``, ``completed_at``).
    :param asked: what was asked, as the user named it (the input is an ``s3://`` ref, never a
        presigned URL, which would expire and leak a signature into the metadata database).
    :param files: the stored outputs' details (``uri``, ``bytes``, ``width``, ``height``, ``format``),
        None when the outputs stayed at the API's download URLs.
    :param input_conn_id: the connection the input is read with (``s3://`` inputs).
    :param output_conn_id: the connection of the output store.
    :param vibedream_conn_id: the VibeDream connection (download bounds for API-hosted outputs).
    """
    image = asked.get("image")
    return {
        "prediction_id": prediction.get("id"),
        "model_id": prediction.get("model_id"),
        "input": image if isinstance(image, str) else None,
        "target_resolution": asked.get("target_resolution"),
        "output_format": asked.get("output_format"),
        "outputs": list(prediction.get("outputs") or []),
        "files": [dict(item) for item in files or []],
        "cost_cents": prediction.get("cost_cents"),
        "created_at": prediction.get("created_at"),
        "completed_at": prediction.get("completed_at"),
        "input_conn_id": input_conn_id,
        "output_conn_id": output_conn_id,
        "vibedream_conn_id": vibedream_conn_id,
    }


@dataclass
class BatchProgress:
    """A batch's progress as people see it in the gallery. Counted in jobs while waiting (repeated
    images share one job), in images once the manifest is written.

    :param images: images in the batch.
    :param jobs: distinct predictions to wait for.
    :param done: jobs finished (completed or failed).
    :param failed: jobs failed so far.
    :param unsubmitted: images with no job to wait for (not submitted, or submission state unknown).
    :param cost_cents: what the submitted predictions cost (billed at submit).
    :param state: ``running`` or ``finished``.
    :param completed_images: images with stored outputs (when finished).
    :param manifest: the manifest's URI once written.
    :param output_conn_id: the connection of the manifest's and outputs' store.
    :param input_conn_id: the connection ``s3://`` inputs are read with.
    :param vibedream_conn_id: the VibeDream connection.
    :param target_resolution: asked of every image.
    :param output_format: asked of every image.
    :param updated_at: epoch seconds of this snapshot.
    """

    images: int
    jobs: int = 0
    done: int = 0
    failed: int = 0
    unsubmitted: int = 0
    cost_cents: float = 0
    state: str = RUNNING
    completed_images: int | None = None
    manifest: str | None = None
    output_conn_id: str | None = None
    input_conn_id: str | None = None
    vibedream_conn_id: str | None = None
    target_resolution: str | None = None
    output_format: str | None = None
    updated_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def advanced(self, *, done: int, failed: int) -> BatchProgress:
        """The same batch with ``done``/``failed`` jobs counted, stamped now."""
        return replace(self, done=done, failed=failed, updated_at=time.time())

    @classmethod
    def from_json(cls, value: Any) -> BatchProgress | None:
        if not isinstance(value, Mapping) or not isinstance(value.get("images"), int):
            return None
        return cls(**{name: value[name] for name in cls.__dataclass_fields__ if name in value})
