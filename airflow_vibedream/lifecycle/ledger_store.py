"""Where the ledger's small documents live, per kind of store, and what a stored output looks like
now (to tell whether a recorded output is still intact).

- local directories: ``O_EXCL``-style atomic create (a hard link of a finished temporary file: a
  reader never sees a half-written document), ``os.replace`` for updates;
- ``s3://``: the amazon provider's S3Hook client; create is a conditional write (``If-None-Match:
  *``), listings are pages of 1,000 names;
- any other ObjectStoragePath: read, write and list through it; there is no atomic create, so two
  tasks racing for the same new image may both pay (the docs say so).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from airflow_vibedream.s3 import s3_client, split_s3_uri
from airflow_vibedream.storage import as_storage_path, storage_uri


class LedgerStore(Protocol):
    """Documents by relative name (``entries/<key>.json``) under the ledger's root."""

    atomic_create: bool

    def read(self, name: str) -> bytes | None: ...

    def create(self, name: str, data: bytes) -> bool:
        """Write ``name`` only if it does not exist; False if it did."""
        ...

    def put(self, name: str, data: bytes) -> None: ...

    def delete(self, name: str) -> None: ...

    def names(self, folder: str) -> list[str]:
        """The document names directly in ``folder`` (``entries``, ``pages``...)."""
        ...


class LocalStore:
    atomic_create = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def _finished_temporary(self, name: str, data: bytes) -> Path:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        temporary.write_bytes(data)
        return temporary

    def create(self, name: str, data: bytes) -> bool:
        temporary = self._finished_temporary(name, data)
        try:
            os.link(temporary, self.root / name)  # atomic, and fails if the name exists
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)

    def put(self, name: str, data: bytes) -> None:
        os.replace(self._finished_temporary(name, data), self.root / name)

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def names(self, folder: str) -> list[str]:
        try:
            return [name for name in os.listdir(self.root / folder) if not name.startswith(".")]
        except FileNotFoundError:
            return []


class S3Store:
    atomic_create = True

    def __init__(self, root_uri: str, conn_id: str | None) -> None:
        self.bucket, prefix = split_s3_uri(root_uri.rstrip("/") + "/")
        self.prefix = prefix.rstrip("/") + "/"
        self.client = s3_client(conn_id)

    def read(self, name: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
        except self.client.exceptions.NoSuchKey:
            return None
        return bytes(answer["Body"].read())

    def create(self, name: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            # 412: the name exists; 409: another conditional write to it is in progress.
            if exc.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return False
            raise

    def put(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)

    def names(self, folder: str) -> list[str]:
        start = f"{self.prefix}{folder}/"
        found: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            found += [item["Key"][len(start) :] for item in page.get("Contents", [])]
        return [name for name in found if name and "/" not in name]


class PathStore:
    """Any other ObjectStoragePath: no atomic create (exists, then write)."""

    atomic_create = False

    def __init__(self, root_uri: str, conn_id: str | None) -> None:
        self.root = as_storage_path(root_uri, conn_id)

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        return bytes(path.read_bytes()) if path.exists() else None

    def create(self, name: str, data: bytes) -> bool:
        if (self.root / name).exists():
            return False
        self.put(name, data)
        return True

    def put(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def delete(self, name: str) -> None:
        path = self.root / name
        if path.exists():
            path.unlink()

    def names(self, folder: str) -> list[str]:
        path = self.root / folder
        return [child.name for child in path.iterdir()] if path.exists() else []


def open_store(root_uri: str, conn_id: str | None) -> LedgerStore:
    uri = storage_uri(root_uri)
    if uri.startswith("file://"):
        return LocalStore(Path(uri[len("file://") :]))
    if uri.startswith("s3://"):
        return S3Store(uri, conn_id)
    return PathStore(uri, conn_id)


# -- stored outputs as they are now -----------------------------------------------------------------


def stored_facts(uris: Iterable[str], conn_id: str | None) -> dict[str, dict[str, Any]]:
    """``{uri: {"bytes": size, "sha256"|"etag": ...}}`` of the outputs that exist now. ``s3://``
    outputs are read with one listing per folder (not one request per object) and carry their
    ETag; local files are hashed (SHA-256); other stores give their size only."""
    facts: dict[str, dict[str, Any]] = {}
    by_folder: dict[str, list[str]] = defaultdict(list)
    for uri in uris:
        if uri.startswith("s3://"):
            by_folder[uri.rsplit("/", 1)[0]].append(uri)
        elif uri.startswith("file://"):
            path = Path(uri[len("file://") :])
            if path.is_file():
                facts[uri] = {"bytes": path.stat().st_size, "sha256": _sha256_of(path)}
        else:
            path = as_storage_path(uri, conn_id)
            if path.exists():
                facts[uri] = {"bytes": int(path.stat()["size"])}
    if by_folder:
        client = s3_client(conn_id)
        for folder, wanted in by_folder.items():
            bucket, prefix = split_s3_uri(folder + "/")
            wanted_set = set(wanted)
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    uri = f"s3://{bucket}/{item['Key']}"
                    if uri in wanted_set:
                        facts[uri] = {"bytes": int(item["Size"]), "etag": str(item["ETag"]).strip('"')}
    return facts


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def intact(recorded: dict[str, Any], now: dict[str, Any] | None) -> bool:
    """True when an output recorded as ``recorded`` is still there with the same size and hash."""
    if now is None or now.get("bytes") != recorded.get("bytes"):
        return False
    # Local files carry their SHA-256 (recorded when stored), S3 objects their ETag (recorded from
    # the listing right after storing): any rewrite changes it.
    return all(recorded.get(name) == now[name] for name in ("sha256", "etag") if name in now)
