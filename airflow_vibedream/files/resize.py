"""Upscale only what upscaling helps: an input already at or above the target's long edge is not
paid for at the API (which would only shrink it); it is resized here with Pillow, in the asked
format, and stored and verified like any output (status ``resized_locally``, cost 0)."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from airflow_vibedream.files.verify import FORMAT_NAMES, LONG_EDGES, ImageFacts, expected_size

#: Pillow's options per format (JPEG at the emulator's quality; PNG compressed fast).
SAVE_OPTIONS: dict[str, dict[str, Any]] = {"JPEG": {"quality": 90}, "PNG": {"compress_level": 6}, "WEBP": {}}
#: The MIME subtype of each format, for the ``data:`` URI the stored output is written from.
SUBTYPES = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}


def is_larger_than_target(facts: ImageFacts | None, target_resolution: str) -> bool:
    """True when the input's long edge is already at or above the target's."""
    long_edge = LONG_EDGES.get(target_resolution)
    return facts is not None and long_edge is not None and max(facts.width, facts.height) >= long_edge


def resized_data_uri(data: bytes, target_resolution: str, output_format: str) -> str:
    """``data`` resized to the target's long edge (aspect ratio kept) and encoded in
    ``output_format``, as a ``data:`` URI (stored and verified the way a base64 output is)."""
    image_format = FORMAT_NAMES[output_format]
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()  # an animation's first frame, as the API upscales it
        mode = "RGB" if image_format == "JPEG" or opened.mode not in ("RGBA", "LA") else "RGBA"
        converted = opened.convert(mode)
    size = expected_size(converted.size, LONG_EDGES[target_resolution])
    resized = converted.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    resized.save(buffer, image_format, **SAVE_OPTIONS[image_format])
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/{SUBTYPES[image_format]};base64,{encoded}"
