"""Where the ledger's small documents live, per kind of store, and what a stored output looks like
now (to tell whether a recorded output is still intact).

- local directories: ``O_EXCL``-style atomic create (a hard link of a finished temporary file: a
  reader never sees a half-written document), a rename for updates; every document is opened as an
  untrusted file (:mod:`airflow_vibedream.files.beneath`): below ``output_path`` no link is followed, only
  regular files are read or listed, and a write through a linked folder is refused;
- ``s3://``: the amazon provider's S3Hook client; create is a conditional write (``If-None-Match:
  *``), listings are pages of 1,000 names;
- any other ObjectStoragePath: read, write and list through it; there is no atomic create, so two
  tasks racing for the same new image may both pay (the docs say so).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import threading
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Protocol

from airflow_vibedream.errors import UnsafeLocalPathError
from airflow_vibedream.files.beneath import read_file, regular_files, remove_file, write_file
from airflow_vibedream.files.s3 import s3_client, split_s3_uri
from airflow_vibedream.files.storage import as_storage_path, storage_uri

log = logging.getLogger(__name__)

#: The most bytes read of one entry (``entries/<key>.json``). An entry is ~1 KB (its input's name,
#: identity, ask, task and outputs); 64 KiB leaves room for a long presigned URL as input and a model
#: with dozens of outputs.
MAX_ENTRY_BYTES = 64 * 1024
#: The most bytes read of one group document (``groups/<name>.json``). A batch keeps one, ~150 bytes
#: per submitted image: 16 MiB holds the ids of a batch of ~100,000 images (10x the 10,000 the
#: ledger benchmark runs).
MAX_GROUP_BYTES = 16 * 1024 * 1024
#: The most bytes read of one page (``pages/<name>.jsonl``). A batch writes one, ~1 KB per completed
#: image: 64 MiB holds ~60,000 images, while a page an attacker inflated is refused before it is
#: read. A real page over it is skipped (with a warning naming it): its images' entries and group
#: documents still name their jobs, so they are reconnected to, not paid again.
MAX_PAGE_BYTES = 64 * 1024 * 1024
#: Skipped documents named in the log, per store; then one line says more were skipped.
LOGGED_SKIPS = 3


def max_bytes_of(name: str) -> int:
    """The most bytes read of the document ``name`` (by its folder)."""
    folder = name.split("/", 1)[0]
    return {"pages": MAX_PAGE_BYTES, "groups": MAX_GROUP_BYTES}.get(folder, MAX_ENTRY_BYTES)


class _Skips:
    """Says which documents a store skipped (by name and reason, never content), the first
    :data:`LOGGED_SKIPS` of them: a folder full of junk must not become a log full of junk."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def say(self, message: str, *args: object) -> None:
        with self._lock:
            self._count += 1
            count = self._count
        if count <= LOGGED_SKIPS:
            log.warning(message, *args)
        elif count == LOGGED_SKIPS + 1:
            log.warning("More VibeDream ledger documents skipped; not naming them")

    def skip(self, name: str, reason: str) -> None:
        # A name may come from a document (a group's): shown short, and escaped unless plain.
        shown = name if name.isprintable() and len(name) <= 120 else repr(name[:120])
        self.say("VibeDream ledger document %s skipped: %s", shown, reason)


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
    """The ledger in a local folder, every document opened as an untrusted file: whoever may write
    into ``output_path`` may have put a link, a FIFO or a huge file among the documents.

    The ledger's own folder and everything below it are opened one component at a time without
    following links; the folder above it (the deployment's ``output_path``) may be a link the
    deployment made. A read takes a regular file of at most :func:`max_bytes_of` bytes, else the
    document is skipped (treated as absent) with a warning naming it; a listing names regular files
    only; a write through a linked folder raises :class:`~airflow_vibedream.errors.UnsafeLocalPathError`
    and writes nothing.

    :param root: the ledger's folder (``<output_path>/_vibedream_ledger``).
    :param trusted: the folder whose own path may hold links (default: ``root``'s parent).
    """

    atomic_create = True

    def __init__(self, root: Path, trusted: Path | None = None) -> None:
        self.root = root
        self.trusted = root.parent if trusted is None else trusted
        self._below = root.relative_to(self.trusted).as_posix()
        self._skips = _Skips()

    def _name(self, name: str) -> str:
        return f"{self._below}/{name}"

    def _why(self, name: str, exc: UnsafeLocalPathError) -> str:
        """The refusal's reason, and what it is about when that is a folder on the way."""
        where = Path(exc.path).relative_to(self.trusted).as_posix()
        return exc.reason if where == self._name(name) else f"{where} {exc.reason}"

    def read(self, name: str) -> bytes | None:
        try:
            return read_file(self.trusted, self._name(name), max_bytes_of(name))
        except UnsafeLocalPathError as exc:
            self._skips.skip(name, self._why(name, exc))
        except ValueError:  # a ".." in a group's name (taken from an entry): never leaves the ledger
            self._skips.skip(name, "is not a name inside the ledger")
        except OSError as exc:  # unreadable (permissions...): proves nothing, like an unparsable one
            self._skips.skip(name, f"cannot be read ({errno_name(exc)})")
        return None

    def _write(self, name: str, data: bytes, *, exclusive: bool) -> bool:
        def fill(handle: IO[bytes]) -> None:
            handle.write(data)

        return write_file(self.trusted, self._name(name), fill, exclusive=exclusive)

    def create(self, name: str, data: bytes) -> bool:
        return self._write(name, data, exclusive=True)

    def put(self, name: str, data: bytes) -> None:
        self._write(name, data, exclusive=False)

    def delete(self, name: str) -> None:
        remove_file(self.trusted, self._name(name))

    def names(self, folder: str) -> list[str]:
        try:
            found, others = regular_files(self.trusted, self._name(folder))
        except UnsafeLocalPathError as exc:
            self._skips.say("VibeDream ledger folder %s skipped: %s", folder, self._why(folder, exc))
            return []
        if others:
            # Counted, not named: a name is whatever the writer chose.
            self._skips.say(
                "VibeDream ledger folder %s: %d name(s) that are not regular files ignored (links, "
                "FIFOs, folders...)",
                folder,
                others,
            )
        return [name for name in found if not name.startswith(".")]


def errno_name(exc: OSError) -> str:
    """``EACCES`` for a permission error...: what went wrong, with no path or content."""
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


class S3Store:
    atomic_create = True

    def __init__(self, root_uri: str, conn_id: str | None) -> None:
        self.bucket, prefix = split_s3_uri(root_uri.rstrip("/") + "/")
        self.prefix = prefix.rstrip("/") + "/"
        self.client = s3_client(conn_id)
        self._skips = _Skips()

    def read(self, name: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
        except self.client.exceptions.NoSuchKey:
            return None
        body, cap = answer["Body"], max_bytes_of(name)
        try:
            # Refused by its announced size before any byte is read; and never more than the cap
            # read, whatever the answer announced.
            if int(answer.get("ContentLength") or 0) > cap:
                self._skips.skip(name, f"is larger than {cap} bytes")
                return None
            data = bytes(body.read(cap + 1))
        finally:
            body.close()
        if len(data) > cap:
            self._skips.skip(name, f"is larger than {cap} bytes")
            return None
        return data

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
        self._skips = _Skips()

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        if not path.exists():
            return None
        cap = max_bytes_of(name)
        with path.open("rb") as handle:
            data = bytes(handle.read(cap + 1))
        if len(data) > cap:
            self._skips.skip(name, f"is larger than {cap} bytes")
            return None
        return data

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


def stored_facts(
    uris: Iterable[str], conn_id: str | None, recorded_sizes: dict[str, int] | None = None
) -> dict[str, dict[str, Any]]:
    """``{uri: {"bytes": size, "sha256"|"etag": ...}}`` of the outputs that exist now. ``s3://``
    outputs are read with one listing per folder (not one request per object) and carry their
    ETag; local files are hashed (SHA-256) when their size is the recorded one (``recorded_sizes``),
    else their hash is None unread: a file swapped for a huge (or sparse) one costs no read at all;
    other stores give their size only."""
    sizes = recorded_sizes or {}
    facts: dict[str, dict[str, Any]] = {}
    by_folder: dict[str, list[str]] = defaultdict(list)
    for uri in uris:
        if uri.startswith("s3://"):
            by_folder[uri.rsplit("/", 1)[0]].append(uri)
        elif uri.startswith("file://"):
            found = _local_facts(Path(uri[len("file://") :]), sizes.get(uri))
            if found is not None:
                facts[uri] = found
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


#: The most of a local output hashed to tell whether it is intact (the largest output downloaded).
MAX_HASHED_BYTES = 512 * 1024 * 1024


def _local_facts(path: Path, recorded_size: int | None = None) -> dict[str, Any] | None:
    """The size and SHA-256 of the regular file at ``path``, None when there is none. Opened as an
    untrusted file: a link at the name is not followed (``O_NOFOLLOW``), a FIFO does not block the
    open (``O_NONBLOCK``) and is not read, nor is a folder or device: each counts as no output (so
    the image is fetched again, never reused from a link's target)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags)
    except OSError:  # missing, a link (ELOOP), a socket, unreadable: not the recorded output
        return None
    with os.fdopen(descriptor, "rb") as handle:
        facts = os.fstat(handle.fileno())
        if not stat.S_ISREG(facts.st_mode):
            return None
        if (recorded_size is not None and facts.st_size != recorded_size) or facts.st_size > MAX_HASHED_BYTES:
            return {"bytes": facts.st_size, "sha256": None}  # not the recorded output: nothing to read
        digest = hashlib.sha256()
        size = 0
        while size <= MAX_HASHED_BYTES and (chunk := handle.read(1 << 20)):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest() if size <= MAX_HASHED_BYTES else None}


def intact(recorded: dict[str, Any], now: dict[str, Any] | None) -> bool:
    """True when an output recorded as ``recorded`` is still there with the same size and hash."""
    if now is None or now.get("bytes") != recorded.get("bytes"):
        return False
    # Local files carry their SHA-256 (recorded when stored), S3 objects their ETag (recorded from
    # the listing right after storing): any rewrite changes it.
    return all(recorded.get(name) == now[name] for name in ("sha256", "etag") if name in now)
