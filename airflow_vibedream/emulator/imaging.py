"""Real image work for the emulator: decode the input, resample it with Pillow, encode the output."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from airflow_vibedream.emulator.contract import INPUT_IMAGE_FORMATS, TARGET_RESOLUTIONS

#: Pillow's encoder name and the file extension for each ``output_format``.
ENCODERS: dict[str, tuple[str, str]] = {
    "jpeg": ("JPEG", "jpg"),
    "png": ("PNG", "png"),
    "webp": ("WEBP", "webp"),
}
MEDIA_TYPES: dict[str, str] = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


class InputImageError(ValueError):
    """The input is not an image the API accepts; the text becomes the prediction's ``error``."""


def target_size(size: tuple[int, int], target_resolution: str) -> tuple[int, int]:
    """Scale ``size`` so its long edge is the resolution's, keeping the aspect ratio."""
    long_edge = TARGET_RESOLUTIONS[target_resolution]
    width, height = size
    scale = long_edge / max(width, height)
    if width >= height:
        return long_edge, max(1, round(height * scale))
    return max(1, round(width * scale)), long_edge


def upscale_to_file(
    data: bytes, target_resolution: str, output_format: str, destination: Path, *, png_compress_level: int = 1
) -> tuple[int, int]:
    """Decode ``data``, resample it to the target resolution and write it to ``destination``.

    Returns the output's (width, height). Raises :class:`InputImageError` for undecodable input.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # GIF/WebP animations: the first frame is the one upscaled
    except Exception as exc:  # Pillow raises many types for bad data; all mean the same here
        raise InputImageError(f"The input image could not be decoded ({type(exc).__name__})") from exc
    if image.format not in INPUT_IMAGE_FORMATS:
        raise InputImageError(
            f"Unsupported input image format {image.format}; accepted: JPEG, PNG, GIF, WebP"
        )
    encoder, _ = ENCODERS[output_format]
    # JPEG has no alpha channel; PNG and WebP keep it.
    mode = "RGB" if encoder == "JPEG" or image.mode not in ("RGBA", "LA") else "RGBA"
    converted = image.convert(mode)
    resized = converted.resize(target_size(converted.size, target_resolution), Image.Resampling.LANCZOS)
    save_options: dict[str, Any] = {
        "JPEG": {"quality": 90},
        "PNG": {"compress_level": png_compress_level},
        "WEBP": {"quality": 85},
    }[encoder]
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    resized.save(partial, format=encoder, **save_options)
    partial.replace(destination)
    return resized.size


def sample_image(width: int, height: int, image_format: str, *, noise: bool = False) -> bytes:
    """A test card (gradient, grid, circle) to use as an input image offline. ``noise`` adds grain,
    which no encoder compresses well: upscaled to 8K as PNG it makes outputs of tens of megabytes."""
    # Gradients built by Pillow, not per-pixel Python, so large samples (benchmarks) stay cheap.
    down = Image.linear_gradient("L").resize((width, height))
    across = Image.linear_gradient("L").rotate(90).resize((width, height))
    image = Image.merge("RGB", (across, down, Image.new("L", (width, height), 128)))
    draw = ImageDraw.Draw(image)
    step = max(8, min(width, height) // 8)
    for x in range(0, width, step):
        draw.line([(x, 0), (x, height)], fill=(255, 255, 255), width=1)
    for y in range(0, height, step):
        draw.line([(0, y), (width, y)], fill=(255, 255, 255), width=1)
    radius = min(width, height) / 4
    cx, cy = width / 2, height / 2
    draw.ellipse(
        [cx - radius, cy - radius, cx + radius, cy + radius],
        outline=(0, 0, 0),
        width=max(1, math.ceil(radius / 20)),
    )
    if noise:
        grain = Image.merge("RGB", [Image.effect_noise((width, height), sigma) for sigma in (60, 70, 80)])
        image = Image.blend(image, grain, 0.5)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def broken_output(data: bytes, kind: str) -> bytes:
    """A wrong version of the output ``data`` (fault kinds ``truncated``, ``wrong_size``,
    ``wrong_format``, ``wrong_aspect``), for testing that clients verify what they store."""
    if kind == "truncated":
        return data[: len(data) // 2]
    opened = Image.open(io.BytesIO(data))
    encoder = str(opened.format)
    image: Image.Image = opened
    if kind == "wrong_size":
        image = image.resize((64, max(1, round(64 * image.height / image.width))))
    elif kind == "wrong_aspect":
        image = image.resize((image.width, max(1, image.height // 2)))
    elif kind == "wrong_format":
        encoder = "PNG" if encoder == "JPEG" else "JPEG"
    out = io.BytesIO()
    image.convert("RGB" if encoder == "JPEG" else image.mode).save(out, encoder)
    return out.getvalue()
