"""Input images: what an ``image`` may be (an http(s) URL or one ``s3://`` object), how it is
handed to the API (``s3://`` presigned), what a prefix lists, and the header read before a submit
that refuses, before anything is paid, an input the API would not accept."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import httpx
from PIL import Image

from airflow_vibedream.client.request import validate_http_url
from airflow_vibedream.errors import OutputStorageError, VibeDreamInputRefusedError, VibeDreamValidationError
from airflow_vibedream.files.downloads import DownloadPolicy, download_chunks
from airflow_vibedream.files.s3 import s3_client, split_s3_uri
from airflow_vibedream.files.sources import head_of, needs_staging

#: SigV4 presigned URLs live at most seven days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


def validate_image_source(field_name: str, value: Any) -> str:
    """An input image is an http(s) URL, or ``s3://bucket/key`` (presigned before submitting)."""
    if isinstance(value, str) and value.startswith("s3://"):
        bucket, _, key = value[len("s3://") :].partition("/")
        if not bucket or not key or key.endswith("/"):
            raise VibeDreamValidationError(
                f"{field_name} must be s3://bucket/key of one object; got {value!r}", field=field_name
            )
        return value
    try:
        return validate_http_url(field_name, value)
    except VibeDreamValidationError:
        if _is_local_path(value):
            raise VibeDreamValidationError(local_path_message(field_name, value), field=field_name) from None
        raise VibeDreamValidationError(
            f"{field_name} must be an http(s) URL or s3://bucket/key of an image; got {value!r}",
            field=field_name,
        ) from None


def _is_local_path(value: Any) -> bool:
    """A file of this machine, as people write one: ``/data/a.png``, ``./a.png``, ``~/a.png``,
    ``file://...``. (``photos/a.png`` could as well be a URL without its scheme: not said to be a
    path.)"""
    return isinstance(value, str) and value.strip().startswith(("/", "./", "../", "~", "file:"))


def local_path_message(field_name: str, value: str) -> str:
    """What to do with a local file: the API downloads every input itself, so it must have a URL."""
    return (
        f"{field_name} is a local path ({value!r}), which VibeDream cannot download: it fetches every "
        "input itself. For a folder of images, use VibeDreamBatchUpscaleOperator(source=<the folder>, "
        "staging_path='s3://bucket/prefix'): local images are staged there for their jobs. Or put the "
        "images in S3 and pass s3://bucket/key (presigned for the job), or serve "
        "the folder over http(s) where the API can reach it and pass its URLs (for the emulator on this "
        "machine: `python -m http.server 8000 --bind 127.0.0.1` in the folder, then "
        "http://127.0.0.1:8000/<file name>)"
    )


def presign_seconds(timeout: float, retries: int | None) -> float:
    """How long an input's presigned URL lives: this try, every retry, and the queueing in between."""
    return timeout * (int(retries or 0) + 1) + 3600


def resolve_image(image: str, *, aws_conn_id: str | None, expires_in: float) -> str:
    """The URL VibeDream downloads the image from: an ``s3://`` object becomes a presigned GET URL
    (made with the amazon provider's S3Hook), valid for ``expires_in`` seconds (capped at 7 days)."""
    if not image.startswith("s3://"):
        return image
    bucket, key = split_s3_uri(image)
    url = s3_client(aws_conn_id).generate_presigned_url(
        ClientMethod="get_object",
        Params={"Bucket": bucket, "Key": key},
        ExpiresIn=int(min(MAX_PRESIGN_SECONDS, max(60, expires_in))),
    )
    if not url:
        raise OutputStorageError(f"Could not presign {image} with connection {aws_conn_id!r}")
    return str(url)


#: The input formats the API accepts ("Accepted: JPEG, PNG, GIF, WebP"), as Pillow names them.
INPUT_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
#: The most of an input read to learn its format and size (a JPEG's size may follow its metadata).
PROBE_BYTES = 1024 * 1024


def probe_input(image: str, *, aws_conn_id: str | None, policy: DownloadPolicy) -> tuple[int, int, str]:
    """(width, height, format) of an input image from its header: a ranged read of an ``s3://``
    object, a bounded read of an http(s) URL. Before anything is paid, an input the API would not
    accept (not JPEG, PNG, GIF or WebP) or that cannot be read is refused, naming the field."""
    try:
        if image.startswith("s3://"):
            head = _s3_head(image, aws_conn_id)
        elif needs_staging(image):  # a local file or another store's object: read where it lies
            head = head_of(image, PROBE_BYTES, aws_conn_id)
        else:
            head = _http_head(image, policy)
    except Exception as exc:
        raise VibeDreamValidationError(
            f"image {image!r} cannot be read to check it before submitting: {type(exc).__name__}: {exc}",
            field="image",
        ) from None
    try:
        with Image.open(io.BytesIO(head), formats=INPUT_FORMATS) as opened:
            return opened.size[0], opened.size[1], str(opened.format)
    except Exception:
        kind = _sniff(head)
        raise VibeDreamInputRefusedError(
            f"image {image!r} is {kind}; VibeDream accepts JPEG, PNG, GIF or WebP images", field="image"
        ) from None


def _sniff(head: bytes) -> str:
    if not head:
        return "empty (0 bytes)"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "a TIFF image"
    if len(head) < PROBE_BYTES:  # the whole file was read: say how little there is
        return f"not a JPEG, PNG, GIF or WebP image ({len(head)} bytes)"
    return "not a JPEG, PNG, GIF or WebP image (or its header is not within the first 1 MiB)"


def _s3_head(image: str, aws_conn_id: str | None) -> bytes:
    bucket, key = split_s3_uri(image)
    answer = s3_client(aws_conn_id).get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{PROBE_BYTES - 1}")
    with contextlib.closing(answer["Body"]) as body:
        return bytes(body.read(PROBE_BYTES))


def _http_head(image: str, policy: DownloadPolicy) -> bytes:
    head = bytearray()
    with httpx.Client(follow_redirects=False) as http:
        chunks = download_chunks(image, http, policy)
        try:
            for chunk in chunks:
                head += chunk
                if len(head) >= PROBE_BYTES:
                    break
        finally:
            chunks.close()  # type: ignore[attr-defined]
    return bytes(head[:PROBE_BYTES])
