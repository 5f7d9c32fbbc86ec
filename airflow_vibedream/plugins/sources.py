"""Reading what the gallery shows, from under the deployment's roots only (see :mod:`.roots`).

Local files are opened race-free beneath their root: one directory at a time from the root's own
descriptor, ``O_NOFOLLOW`` at every step, so neither a ``..`` nor a symlink (even one swapped in
between a check and the open) leaves the root; only a regular file is read (a FIFO or a device
would hang or never end). ``s3://`` objects are read through the amazon provider's S3Hook with the
root's connection, other stores through ObjectStoragePath. Every read is bounded in bytes and time.

Errors say what went wrong without naming a server path: the detail goes to the api-server's log."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

from airflow_vibedream.plugins.roots import LocalLocation, Location, StoreLocation

log = logging.getLogger(__name__)

#: Seconds a presigned output URL made for a click stays valid.
PRESIGN_SECONDS = 300
#: Chunk size of streamed reads.
CHUNK = 256 * 1024

#: What the gallery answers for each file type it serves; anything else is a download.
MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".jsonl": "application/x-ndjson",
    ".json": "application/json",
}


class SourceUnavailable(Exception):
    """A location under a root that cannot be read (missing, not a file, too large, too slow)."""


@dataclass(frozen=True)
class ReadBounds:
    """How much one read may take.

    :param max_bytes: the most bytes read from one source.
    :param seconds: the longest one read may take in all.
    """

    max_bytes: int = 512 * 1024 * 1024
    seconds: float = 30.0


@contextlib.contextmanager
def open_chunks(location: Location, bounds: ReadBounds) -> Iterator[Iterator[bytes]]:
    """The bytes at ``location`` in chunks, within ``bounds``; :class:`SourceUnavailable` when not."""
    try:
        with _open(location) as handle:
            yield _bounded(_chunks(handle), bounds)
    except SourceUnavailable:
        raise
    except Exception as exc:  # a missing object, a store's own error: never a 500, never a path
        log.warning("VibeDream gallery: cannot read %s: %s: %s", _where(location), type(exc).__name__, exc)
        raise SourceUnavailable("The image cannot be read") from None


def _where(location: Location) -> str:
    if isinstance(location, LocalLocation):
        return str(location.root.directory.joinpath(*location.parts))
    return location.uri


@contextlib.contextmanager
def _open(location: Location) -> Iterator[IO[bytes]]:
    if isinstance(location, LocalLocation):
        with os.fdopen(open_beneath(location), "rb") as handle:
            yield handle
    elif location.root.scheme == "s3":
        body = _s3_body(location)
        try:
            yield body
        finally:
            body.close()
    else:
        from airflow_vibedream.files.storage import as_storage_path

        with as_storage_path(location.uri, location.root.conn_id).open("rb") as handle:
            yield handle


def open_beneath(location: LocalLocation) -> int:
    """A read-only descriptor of the regular file at ``location``, opened without ever following a
    symlink or leaving the root."""
    directory = os.open(location.root.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in location.parts[:-1]:
            below = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory
            )
            os.close(directory)
            directory = below
        # O_NONBLOCK: opening a FIFO must not wait for a writer; a regular file ignores it.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        descriptor = os.open(location.parts[-1], flags, dir_fd=directory)
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise SourceUnavailable("Not a regular file")
    os.set_blocking(descriptor, True)
    return descriptor


def _s3_body(location: StoreLocation) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=location.root.conn_id).get_key(location.key, location.root.bucket).get()["Body"]


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


def _bounded(chunks: Iterator[bytes], bounds: ReadBounds) -> Iterator[bytes]:
    deadline = time.monotonic() + bounds.seconds
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > bounds.max_bytes:
            raise SourceUnavailable(f"Larger than the gallery reads ({bounds.max_bytes} bytes)")
        if time.monotonic() > deadline:
            raise SourceUnavailable(f"Not read within {bounds.seconds:g}s")
        yield chunk


def presigned_url(location: StoreLocation, expires_in: int = PRESIGN_SECONDS) -> str:
    """A short-lived GET URL of an ``s3://`` object under a root, signed with the root's connection."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    # The browser shows the image instead of downloading it: objects written through s3fs carry no
    # content type, so the URL asks S3 to answer with the right one, inline (images only).
    kind = media_type(location.name)
    params = {
        "Bucket": location.root.bucket,
        "Key": location.key,
        "ResponseContentType": kind,
        "ResponseContentDisposition": "inline" if kind.startswith("image/") else "attachment",
    }
    try:
        url = S3Hook(aws_conn_id=location.root.conn_id).generate_presigned_url(
            client_method="get_object", params=params, expires_in=expires_in
        )
    except Exception as exc:
        log.warning("VibeDream gallery: cannot presign %s: %s", location.uri, exc)
        url = None
    if not url:
        raise SourceUnavailable("The object cannot be linked to")
    return str(url)


def media_type(name: str) -> str:
    """The media type the gallery serves a file as (by its name; unknown: a download)."""
    return MEDIA_TYPES.get(PurePosixPath(name).suffix.lower(), "application/octet-stream")
