"""One S3 client per AWS connection and process, reused for a few minutes.

Making an S3Hook and its boto3 client costs about 0.1-0.2 s of CPU (connection lookup, session,
endpoint resolution); a batch paid it several times per image (header read, presign, identity), so
a 10,000-image batch spent most of its CPU making clients. boto3 clients are thread-safe. A client
is remade after :data:`CLIENT_TTL` seconds, so a changed connection (or rotated static keys) is
picked up within that time; a connection given in the environment is remade at once when its
value changes.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

#: Seconds a client is reused.
CLIENT_TTL = 300.0
#: Connections a shared client keeps open at least (botocore's default is 10).
MIN_POOL_CONNECTIONS = 64

_lock = threading.Lock()
_clients: dict[tuple[str | None, str | None], tuple[float, Any]] = {}


def s3_client(aws_conn_id: str | None) -> Any:
    """The boto3 S3 client of ``aws_conn_id`` (the amazon provider's S3Hook makes it)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.config import Config

    key = (aws_conn_id, os.environ.get(f"AIRFLOW_CONN_{(aws_conn_id or '').upper()}"))
    now = time.monotonic()
    with _lock:
        cached = _clients.get(key)
    if cached is not None and now - cached[0] < CLIENT_TTL:
        return cached[1]
    # One client serves every thread of a batch (16 at once for the ledger's reads): a pool of 64
    # connections, or the connection's own larger one (its extra's config_kwargs are kept).
    own = S3Hook(aws_conn_id=aws_conn_id).config
    pool = Config(max_pool_connections=max(own.max_pool_connections or 0, MIN_POOL_CONNECTIONS))
    client = S3Hook(aws_conn_id=aws_conn_id, config=own.merge(pool)).get_conn()
    with _lock:
        _clients[key] = (now, client)
    return client


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://bucket/key`` URI."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket, key = S3Hook.parse_s3_url(uri)
    return str(bucket), str(key)


def list_objects(prefix_uri: str, *, aws_conn_id: str | None) -> list[tuple[str, str, int]]:
    """The objects under an ``s3://bucket/prefix``: ``(s3:// URI, ETag, size)`` in key order (the
    listing carries each object's ETag and size: the ledger identifies them without a HEAD)."""
    bucket, prefix = split_s3_uri(prefix_uri if "/" in prefix_uri[5:] else prefix_uri + "/")
    client = s3_client(aws_conn_id)
    found = [
        (f"s3://{bucket}/{item['Key']}", str(item["ETag"]), int(item["Size"]))
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
        if not item["Key"].endswith("/")
    ]
    return sorted(found)
