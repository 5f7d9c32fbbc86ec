"""What was asked, and its fingerprint: a later try adopts a stored job only for the very same ask."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def fingerprint_of(model_id: str, asked: Mapping[str, Any]) -> str:
    """SHA-256 of the model id and the request as the user named it, in a canonical JSON form."""
    canonical = json.dumps(
        {"model_id": model_id, "input": dict(asked)}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class JobSpec:
    """One job as asked.

    :param model_id: the model.
    :param asked: the input as the user named it: an ``s3://`` image stays ``s3://`` (its presigned
        URL changes on every try and says nothing about the image), every flag included.
    """

    model_id: str
    asked: Mapping[str, Any]
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", fingerprint_of(self.model_id, self.asked))

    @property
    def duration_kind(self) -> str:
        """Jobs that take alike: the model and, when asked, the resolution (``image-upscaler:4k``)."""
        resolution = self.asked.get("target_resolution")
        return f"{self.model_id}:{resolution}" if isinstance(resolution, str) else self.model_id


def what_changed(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> str:
    """A short account of how two asks differ, for the task log (``target_resolution: '2k' -> '4k'``)."""
    if not before:
        return "the earlier record has no fingerprint"
    changes = [
        f"{name}: {before.get(name)!r} -> {after.get(name)!r}"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]
    return "; ".join(changes) or "model changed"
