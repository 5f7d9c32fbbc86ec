"""Reading what the gallery shows: stored outputs, inputs and manifests, wherever they live.

Every read is bounded (``max_bytes``) and goes through the store's own client: ``s3://`` through the
amazon provider's S3Hook, other object stores through ObjectStoragePath, http(s) through the same
checked, bounded download as the operators' (private addresses only where the VibeDream connection
allows them). Local files are served only under the configured roots, because a path in an XCom
must never let a gallery visitor read the api-server's own files."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

import httpx

from airflow_vibedream.downloads import DownloadPolicy, download_chunks
from airflow_vibedream.errors import OutputStorageError

log = logging.getLogger(__name__)

#: Seconds a presigned output URL made for a click stays valid.
PRESIGN_SECONDS = 300
#: Chunk size of streamed reads.
CHUNK = 256 * 1024


class SourceRefused(OutputStorageError):
    """The gallery will not read this location (outside the local roots, an unknown scheme)."""


@dataclass(frozen=True)
class SourceRules:
    """Where the gallery may read from.

    :param local_roots: directories whose files may be served (resolved, symlinks followed).
    :param max_bytes: the most bytes read from any one source.
    """

    local_roots: tuple[Path, ...] = ()
    max_bytes: int = 512 * 1024 * 1024

    @classmethod
    def from_config(cls) -> SourceRules:
        """From ``[vibedream] gallery_local_roots`` (``os.pathsep``-separated) and
        ``gallery_max_source_mb``."""
        from airflow.providers.common.compat.sdk import conf

        roots = conf.get("vibedream", "gallery_local_roots", fallback="") or ""
        max_mb = conf.getint("vibedream", "gallery_max_source_mb", fallback=512)
        return cls(
            local_roots=tuple(Path(root).expanduser().resolve() for root in roots.split(os.pathsep) if root),
            max_bytes=max_mb * 1024 * 1024,
        )

    def local_file(self, uri: str) -> Path:
        """The file a ``file://`` URI or plain path names, if it lies under a local root."""
        path = Path(unquote(urlsplit(uri).path) if uri.startswith("file://") else uri).resolve()
        if not any(path.is_relative_to(root) for root in self.local_roots):
            raise SourceRefused(
                f"{path} is outside [vibedream] gallery_local_roots; the gallery serves local files only "
                "under those directories"
            )
        if not path.is_file():
            raise FileNotFoundError(str(path))
        return path


def s3_location(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    return parts.netloc, parts.path.lstrip("/")


@contextlib.contextmanager
def open_chunks(
    uri: str,
    *,
    rules: SourceRules,
    conn_id: str | None,
    http_policy: DownloadPolicy | None,
) -> Iterator[Iterator[bytes]]:
    """The bytes at ``uri`` in chunks, at most ``rules.max_bytes`` of them."""
    scheme = urlsplit(uri).scheme if "://" in uri else ""
    if scheme in ("http", "https"):
        policy = http_policy or DownloadPolicy()
        policy = DownloadPolicy(
            max_bytes=min(policy.max_bytes, rules.max_bytes),
            timeout=policy.timeout,
            read_timeout=policy.read_timeout,
            allow_private=policy.allow_private,
        )
        with httpx.Client(follow_redirects=False) as http:
            yield download_chunks(uri, http, policy)
    elif scheme in ("", "file"):
        path = rules.local_file(uri)
        with path.open("rb") as handle:
            yield _capped(_file_chunks(handle), rules.max_bytes, uri)
    elif scheme == "s3":
        yield _capped(_s3_chunks(uri, conn_id), rules.max_bytes, uri)
    else:
        yield _capped(_object_store_chunks(uri, conn_id), rules.max_bytes, uri)


def _file_chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


def _capped(chunks: Iterator[bytes], max_bytes: int, uri: str) -> Iterator[bytes]:
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise OutputStorageError(f"{uri} is larger than the gallery reads ({max_bytes} bytes)")
        yield chunk


def _s3_chunks(uri: str, conn_id: str | None) -> Iterator[bytes]:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket, key = s3_location(uri)
    body = S3Hook(aws_conn_id=conn_id).get_key(key, bucket_name=bucket).get()["Body"]
    try:
        while chunk := body.read(CHUNK):
            yield chunk
    finally:
        body.close()


def _object_store_chunks(uri: str, conn_id: str | None) -> Iterator[bytes]:
    from airflow_vibedream.storage import as_storage_path

    with as_storage_path(uri, conn_id).open("rb") as handle:
        yield from _file_chunks(handle)


def presigned_url(uri: str, conn_id: str | None, expires_in: int = PRESIGN_SECONDS) -> str:
    """A short-lived GET URL of an ``s3://`` object, made now."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket, key = s3_location(uri)
    # The browser shows the image instead of downloading it: objects written through s3fs carry no
    # content type, so the URL asks S3 to answer with the right one, inline.
    params = {
        "Bucket": bucket,
        "Key": key,
        "ResponseContentType": media_type(uri),
        "ResponseContentDisposition": "inline",
    }
    url = S3Hook(aws_conn_id=conn_id).generate_presigned_url(
        client_method="get_object", params=params, expires_in=expires_in
    )
    if not url:
        raise OutputStorageError(f"Could not presign {uri}")
    return str(url)


class HttpPolicies:
    """The download bounds of each VibeDream connection, looked up once a minute at most.

    Looked up under a lock, because a gallery page asks for its thumbnails in parallel and the
    api-server's first connection lookups (secrets backends loaded lazily) are best not raced; a
    failed lookup is tried once more and logged, never silently turned into "public only", which
    would refuse an API on a private address (the emulator, an in-cluster gateway) for that one
    request."""

    #: Seconds a looked-up policy is kept (a changed connection is seen within this time).
    KEEP_SECONDS = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[float, DownloadPolicy]] = {}

    def for_connection(self, vibedream_conn_id: str | None) -> DownloadPolicy | None:
        """The bounds of ``vibedream_conn_id``'s outputs; None (public destinations only) when there
        is no such connection on the api-server."""
        if not vibedream_conn_id:
            return None
        with self._lock:
            kept = self._kept.get(vibedream_conn_id)
            if kept and time.monotonic() - kept[0] < self.KEEP_SECONDS:
                return kept[1]
            policy = self._look_up(vibedream_conn_id)
            if policy is not None:
                self._kept[vibedream_conn_id] = (time.monotonic(), policy)
            return policy

    @staticmethod
    def _look_up(vibedream_conn_id: str) -> DownloadPolicy | None:
        from airflow_vibedream.hooks.vibedream import VibeDreamHook
        from airflow_vibedream.lifecycle.outputs import download_policy

        for attempt in (1, 2):
            try:
                return download_policy(VibeDreamHook(vibedream_conn_id=vibedream_conn_id).get_settings())
            except Exception as exc:  # a missing connection, a secrets backend's hiccup
                log.warning(
                    "VibeDream gallery: cannot read connection %r (attempt %d of 2): %s: %s; "
                    "http(s) images are then read from public addresses only",
                    vibedream_conn_id,
                    attempt,
                    type(exc).__name__,
                    exc,
                )
        return None


http_policies = HttpPolicies()


def http_policy_for(vibedream_conn_id: str | None) -> DownloadPolicy | None:
    """The download bounds of the VibeDream connection (None when it cannot be read)."""
    return http_policies.for_connection(vibedream_conn_id)


def media_type(uri: str) -> str:
    suffix = Path(urlsplit(uri).path).suffix.lower()
    return {
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".webp": "image/webp",
        ".gif": "image/gif",
        ".jsonl": "application/x-ndjson",
        ".json": "application/json",
    }.get(suffix, "application/octet-stream")
