"""What an input image *is*, whatever it is called: the ledger's notion of "the same image".

- ``s3://``: the object's ETag and size, from one HEAD (or from the prefix listing, which carries
  both, so a batch over a prefix reads no object at all). An ETag is derived from the bytes (MD5 of
  a single-part upload, of its parts for a multipart one; a new value for every write under
  SSE-KMS), so the same bytes under another key are the same image and other bytes under the same
  key are a new one. A versioned object's VersionId is kept as evidence, not as part of the
  identity: a re-upload of the same bytes makes a new version, not a new image.
- ``http(s)``: the SHA-256 of the bytes, read within the download bounds. A server's ETag is not
  used: it is a validator of one URL (often its mtime and size), not a hash of the bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from airflow_vibedream.errors import VibeDreamValidationError
from airflow_vibedream.files.downloads import DownloadPolicy, download_chunks
from airflow_vibedream.files.s3 import s3_client, split_s3_uri
from airflow_vibedream.files.sources import needs_staging, sha256_of

#: Request flags that change how the answer is delivered, not which image comes out.
DELIVERY_ONLY = ("enable_sync_mode", "enable_base64_output")


@dataclass(frozen=True)
class ContentIdentity:
    """The identity of an input's bytes.

    :param kind: ``s3-etag`` or ``sha256``.
    :param value: the ETag (quotes removed) or the hex digest.
    :param size: the size in bytes.
    :param version: an S3 VersionId, when the bucket is versioned (evidence only).
    """

    kind: str
    value: str
    size: int
    version: str | None = None

    @property
    def token(self) -> str:
        return f"{self.kind}:{self.value}:{self.size}"

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def s3_identity(etag: str, size: int, version: str | None = None) -> ContentIdentity:
    return ContentIdentity("s3-etag", etag.strip('"'), int(size), version if version != "null" else None)


def identity_of(image: str, *, aws_conn_id: str | None, policy: DownloadPolicy) -> ContentIdentity:
    """The identity of ``image`` (one HEAD of an ``s3://`` object, or a bounded read of a URL);
    refused, naming the field, when it cannot be read: nothing is paid for an unreadable image."""
    try:
        if image.startswith("s3://"):
            bucket, key = split_s3_uri(image)
            head = s3_client(aws_conn_id).head_object(Bucket=bucket, Key=key)
            return s3_identity(head["ETag"], head["ContentLength"], head.get("VersionId"))
        if needs_staging(image):  # a local file or another store's object: its bytes where they lie
            return ContentIdentity("sha256", *sha256_of(image, aws_conn_id))
        digest = hashlib.sha256()
        size = 0
        with httpx.Client(follow_redirects=False) as http:
            for chunk in download_chunks(image, http, policy):
                digest.update(chunk)
                size += len(chunk)
        return ContentIdentity("sha256", digest.hexdigest(), size)
    except Exception as exc:
        raise VibeDreamValidationError(
            f"image {image!r} cannot be read to identify it before submitting: {type(exc).__name__}: {exc}",
            field="image",
        ) from None


def decisive_ask(asked: Mapping[str, Any]) -> dict[str, Any]:
    """What, besides the image's bytes and the model, decides the output (the named image and the
    delivery flags do not)."""
    return {name: value for name, value in asked.items() if name != "image" and name not in DELIVERY_ONLY}


def ledger_key(model_id: str, asked: Mapping[str, Any], identity: ContentIdentity) -> str:
    """SHA-256 of the model, the decisive ask and the input's identity (canonical JSON)."""
    canonical = json.dumps(
        {"model_id": model_id, "ask": decisive_ask(asked), "input": identity.token},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
