"""What is sent: the upscaler's request model and the checks every input passes before a request."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from airflow_vibedream.constants import OUTPUT_FORMATS, TARGET_RESOLUTIONS, UPSCALER_MODEL_ID
from airflow_vibedream.errors import VibeDreamValidationError


def validate_choice(field_name: str, value: Any, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise a validation error naming the field."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise VibeDreamValidationError(
            f"{field_name} must be one of {', '.join(allowed)}; got {value!r}", field=field_name
        )
    return value


def validate_bool(field_name: str, value: Any) -> bool:
    """Return ``value`` if it is a real boolean (not a truthy string), else raise naming the field."""
    if not isinstance(value, bool):
        raise VibeDreamValidationError(f"{field_name} must be true or false; got {value!r}", field=field_name)
    return value


def validate_http_url(field_name: str, value: Any) -> str:
    """Return ``value`` if it is an absolute http(s) URL with a host, else raise naming the field."""
    if not isinstance(value, str) or not value.strip():
        raise VibeDreamValidationError(
            f"{field_name} must be an http(s) URL of an image; got {value!r}", field=field_name
        )
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise VibeDreamValidationError(
            f"{field_name} must be an http(s) URL of an image (e.g. https://example.com/photo.jpg); "
            f"got {value!r}",
            field=field_name,
        )
    return value.strip()


@dataclass(frozen=True)
class UpscaleRequest:
    """The input of the ``image-upscaler`` model, validated on construction.

    :param image: public http(s) URL of the image (JPEG, PNG, GIF or WebP).
    :param target_resolution: ``2k``, ``4k`` or ``8k`` (long edge 2048, 3840 or 7680 px).
    :param output_format: ``jpeg``, ``png`` or ``webp``.
    :param enable_base64_output: return the image as base64 text instead of a download URL.
    :param enable_sync_mode: let the API wait for the result before answering the submit.
    """

    image: str
    target_resolution: str
    output_format: str
    enable_base64_output: bool = False
    enable_sync_mode: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "image", validate_http_url("image", self.image))
        validate_choice("target_resolution", self.target_resolution, tuple(TARGET_RESOLUTIONS))
        validate_choice("output_format", self.output_format, OUTPUT_FORMATS)
        validate_bool("enable_base64_output", self.enable_base64_output)
        validate_bool("enable_sync_mode", self.enable_sync_mode)

    def to_payload(self) -> dict[str, Any]:
        """The JSON body of the generate call."""
        return {
            "image": self.image,
            "target_resolution": self.target_resolution,
            "output_format": self.output_format,
            "enable_base64_output": self.enable_base64_output,
            "enable_sync_mode": self.enable_sync_mode,
        }


def _is_path_segment(value: Any) -> bool:
    """One URL path segment that stays one: no separators, not ``.``/``..`` (which collapse)."""
    return (
        isinstance(value, str)
        and bool(value)
        and value.strip() == value
        and value not in (".", "..")
        and "/" not in value
        and "\\" not in value  # two tests, not a generator: this runs on every poll
    )


def validate_model_id(model_id: Any) -> str:
    """A model id is one URL path segment: refuse anything that would change the route."""
    if not _is_path_segment(model_id):
        raise VibeDreamValidationError(
            f"model_id must be a model name such as {UPSCALER_MODEL_ID!r}; got {model_id!r}",
            field="model_id",
        )
    return str(model_id)


def validate_prediction_id(prediction_id: Any) -> str:
    """A prediction id is one URL path segment: refuse anything that would change the route."""
    if not _is_path_segment(prediction_id):
        raise VibeDreamValidationError(
            f"prediction_id must be a prediction id; got {prediction_id!r}", field="prediction_id"
        )
    return str(prediction_id)
