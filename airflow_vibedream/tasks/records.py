"""What the operators leave behind for Airflow's UI: one small XCom per finished image, one progress
XCom per batch, and the lines of a batch's manifest.

Each kind is one typed model, and every reader goes through it. These records are *data written by
someone less trusted than their reader*: anyone who may write XCom through Airflow's REST API can
write one. So a model only says what was done and where it landed (a URI to look up among the
deployment's gallery roots), never how to read it: no connection id, no flag the reader obeys. A
value that does not parse is no record at all (:meth:`parse` answers None), never half of one."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

#: XCom key of a finished single-image task's gallery record (see :class:`ImageResult`).
RESULT_XCOM_KEY = "vibedream_result"
#: XCom key of a batch's progress (see :class:`BatchProgress`), rewritten while it runs.
PROGRESS_XCOM_KEY = "vibedream_batch_progress"

#: Batch progress states.
RUNNING = "running"
FINISHED = "finished"

#: The longest text kept from a record (a URI, an id, an error message).
MAX_TEXT = 4096
#: The most outputs one prediction is read with.
MAX_OUTPUTS = 64

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Count = Annotated[StrictInt, Field(ge=0, le=10**9)]

_Model = TypeVar("_Model", bound="Record")


class Record(BaseModel):
    """A record read from data: unknown fields ignored, nothing coerced from another type."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    @classmethod
    def parse(cls: type[_Model], value: Any) -> _Model | None:
        """The record in ``value``, or None when it is not one (wrong types, missing fields)."""
        if not isinstance(value, Mapping):
            return None
        try:
            return cls.model_validate(dict(value))
        except (ValidationError, TypeError, ValueError):
            return None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Cost(Record):
    """A record with a cost: finite and not negative, else unknown."""

    cost_cents: float | None = None

    @field_validator("cost_cents", mode="before")
    @classmethod
    def _finite_cost(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | None):
            raise ValueError("cost_cents must be a number")
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError("cost_cents must be finite and not negative")
        return None if value is None else float(value)


class StoredFile(Record):
    """One stored output as the operator measured it.

    :param uri: where it is stored.
    :param bytes: its size.
    :param width: pixel width.
    :param height: pixel height.
    :param format: the image format (``PNG``, ``JPEG``, ``WEBP``).
    """

    uri: Text
    bytes: Count | None = None
    width: Count | None = None
    height: Count | None = None
    format: Annotated[str, Field(max_length=16)] | None = None


class ImageResult(Cost):
    """The gallery record of one finished prediction.

    :param prediction_id: the prediction.
    :param model_id: its model.
    :param input: the input as the user named it (an ``s3://`` ref, never a presigned URL).
    :param target_resolution: what was asked.
    :param output_format: what was asked.
    :param outputs: where the outputs are (stored URIs, or the API's download URLs).
    :param files: the stored outputs' details, empty when nothing was stored.
    :param created_at: ISO 8601, as the API said.
    :param completed_at: ISO 8601, as the API said.
    """

    prediction_id: Text
    model_id: Text | None = None
    input: Text | None = None
    target_resolution: Annotated[str, Field(max_length=16)] | None = None
    output_format: Annotated[str, Field(max_length=16)] | None = None
    outputs: Annotated[list[Text], Field(max_length=MAX_OUTPUTS)] = []
    files: Annotated[list[StoredFile], Field(max_length=MAX_OUTPUTS)] = []
    created_at: Annotated[str, Field(max_length=64)] | None = None
    completed_at: Annotated[str, Field(max_length=64)] | None = None


def image_record(
    *, prediction: Mapping[str, Any], asked: Mapping[str, Any], files: list[Mapping[str, Any]] | None
) -> dict[str, Any]:
    """The gallery record of one finished prediction, as the XCom value.

    :param prediction: the operator's result (``id``, ``model_id``, ``outputs``, ``cost_cents``,
        ``created_at``, ``completed_at``).
    :param asked: what was asked, as the user named it (the input is an ``s3://`` ref, never a
        presigned URL, which would expire and leak a signature into the metadata database).
    :param files: the stored outputs' details, None when the outputs stayed at the API's URLs.
    """
    image = asked.get("image")
    return ImageResult(
        prediction_id=_text(prediction.get("id")) or "?",
        model_id=_text(prediction.get("model_id")),
        input=_text(image),
        target_resolution=_text(asked.get("target_resolution"), 16),
        output_format=_text(asked.get("output_format"), 16),
        outputs=[_output(output) for output in (prediction.get("outputs") or [])[:MAX_OUTPUTS]],
        files=[StoredFile.model_validate(_file_facts(item)) for item in (files or [])[:MAX_OUTPUTS]],
        cost_cents=Cost.model_validate({"cost_cents": prediction.get("cost_cents")}).cost_cents,
        created_at=_text(prediction.get("created_at"), 64),
        completed_at=_text(prediction.get("completed_at"), 64),
    ).to_json()


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """A text field of a record: a text within ``limit``, else nothing (a record never fails a task)."""
    return value if isinstance(value, str) and len(value) <= limit else None


def _output(output: Any) -> str:
    # Base64 outputs (no output_path) are images, not locations: never copied into a record. A
    # location is a URI (stored: file://, s3://; or the API's download URL); base64 has no "://".
    text = _text(output)
    return text if text is not None and "://" in text and not text.startswith("data:") else "(inline output)"


def _file_facts(item: Mapping[str, Any]) -> dict[str, Any]:
    facts = {key: item.get(key) for key in ("bytes", "width", "height")}
    return {**facts, "uri": _text(item.get("uri")) or "?", "format": _text(item.get("format"), 16)}


class BatchProgress(Cost):
    """A batch's progress as people see it in the gallery. Counted in jobs while waiting (repeated
    images share one job), in images once the manifest is written.

    :param images: images in the batch.
    :param jobs: distinct predictions to wait for.
    :param done: jobs finished (completed or failed).
    :param failed: jobs failed so far.
    :param unsubmitted: images with no job to wait for (not submitted, or submission state unknown).
    :param reused: images among them done before (the ledger), nothing paid.
    :param resized: images among them resized locally (already at or above the target), nothing paid.
    :param skipped: images among them not sent, each with its reason in the manifest.
    :param by_status: images by manifest status (when finished).
    :param cost_cents: what the submitted predictions cost (billed at submit).
    :param state: ``running`` or ``finished``.
    :param completed_images: images with stored outputs (when finished).
    :param manifest: the manifest's URI once written.
    :param target_resolution: asked of every image.
    :param output_format: asked of every image.
    :param updated_at: epoch seconds of this snapshot.
    """

    images: Count
    jobs: Count = 0
    done: Count = 0
    failed: Count = 0
    unsubmitted: Count = 0
    reused: Count = 0
    resized: Count = 0
    skipped: Count = 0
    by_status: Annotated[dict[Annotated[str, Field(max_length=64)], Count], Field(max_length=16)] = {}
    cost_cents: float | None = 0.0
    state: Literal["running", "finished"] = "running"
    completed_images: Count | None = None
    manifest: Text | None = None
    target_resolution: Annotated[str, Field(max_length=16)] | None = None
    output_format: Annotated[str, Field(max_length=16)] | None = None
    updated_at: float = Field(default_factory=time.time, allow_inf_nan=False)

    @field_validator("updated_at", mode="before")
    @classmethod
    def _epoch(cls, value: Any) -> Any:
        # JSON has one number type: an epoch written as 1700000000 is still a time.
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @classmethod
    def from_json(cls, value: Any) -> BatchProgress | None:
        return cls.parse(value)

    def advanced(self, *, done: int, failed: int) -> BatchProgress:
        """The same batch with ``done``/``failed`` jobs counted, stamped now."""
        return self.model_copy(update={"done": done, "failed": failed, "updated_at": time.time()})

    def finished(
        self, *, completed_images: int, manifest: str | None, by_status: dict[str, int] | None = None
    ) -> BatchProgress:
        """The batch once its manifest is written."""
        return self.model_copy(
            update={
                "state": FINISHED,
                "completed_images": completed_images,
                "manifest": manifest,
                "by_status": dict(list((by_status or {}).items())[:16]),
                "updated_at": time.time(),
            }
        )


class ManifestLine(Cost):
    """One line of a batch's manifest (one input image), as the gallery reads it.

    :param input: the input as named.
    :param prediction_id: its prediction, if one was made.
    :param status: ``completed``, ``failed``, ``timeout``, ``not_submitted``, ...
    :param outputs: where its outputs are stored.
    :param error: why it did not complete.
    """

    input: Text | None = None
    prediction_id: Text | None = None
    status: Annotated[str, Field(max_length=64)] = "unknown"
    outputs: Annotated[list[Text], Field(max_length=MAX_OUTPUTS)] | None = None
    error: Text | None = None
