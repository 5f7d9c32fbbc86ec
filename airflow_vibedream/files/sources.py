"""A batch's ``source``: a list of images, a local folder (or ``file://`` URI), an ``s3://`` prefix,
or any other prefix Airflow's ``ObjectStoragePath`` reads; walked recursively, filtered by include
patterns, each image with its path relative to the source (the dataset layout mirrors it).

The API fetches every input itself from a URL. An image it cannot fetch (a local file, an object in
a store the API cannot read) is *staged*: copied under ``staging_path`` (an ``s3://`` prefix) in a
folder of its own task instance, named by its bytes' SHA-256 (so staging never changes what the
ledger sees, and never pays twice), presigned for the job's life, and deleted when the batch ends.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from airflow_vibedream.errors import VibeDreamValidationError
from airflow_vibedream.files.s3 import list_objects
from airflow_vibedream.files.storage import safe_segment

#: What a folder walk picks up by default (the API's formats; the header check refuses the rest).
DEFAULT_INCLUDE = ("*.jpg", "*.jpeg", "*.png", "*.gif", "*.webp")
#: Chunk of a staged upload and of hashing a local file.
CHUNK = 1024 * 1024
#: ``output_layout`` values: a folder per run (``output_name_template``), or the dataset's mirror.
LAYOUT_PER_RUN = "per_run"
LAYOUT_DATASET = "dataset"
LAYOUTS = (LAYOUT_PER_RUN, LAYOUT_DATASET)


@dataclass(frozen=True)
class SourceImage:
    """One image of a source.

    :param uri: the image as the batch names it (a URL, ``s3://``, a local path, a store URI).
    :param relative: its path relative to the source (None for an image of a list).
    :param etag: an ``s3://`` listing's ETag (with ``size``: its identity without a read).
    :param size: its size in bytes, when the listing says.
    """

    uri: str
    relative: str | None = None
    etag: str | None = None
    size: int | None = None


def is_fetchable(image: str) -> bool:
    """True for an image the API (or a presigned URL) can fetch: http(s) and ``s3://``."""
    return image.startswith(("http://", "https://", "s3://"))


def needs_staging(image: str) -> bool:
    """True for an image the API cannot fetch itself: a local file or another store's object."""
    return not is_fetchable(image)


def local_file(image: str) -> Path | None:
    """The local file ``image`` names (a path or ``file://``), else None."""
    if image.startswith("file://"):
        return Path(image[len("file://") :])
    if "://" not in image:
        return Path(image).expanduser()
    return None


def open_image(image: str, conn_id: str | None = None) -> IO[bytes]:
    """A local file or a store object that needs staging, opened for reading."""
    path = local_file(image)
    if path is not None:
        return path.open("rb")
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    handle: IO[bytes] = ObjectStoragePath(image, conn_id=conn_id).open("rb")  # type: ignore[no-untyped-call,unused-ignore]
    return handle


def sha256_of(image: str, conn_id: str | None = None) -> tuple[str, int]:
    """(SHA-256 hex, size) of a staged-kind image's bytes, read once in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open_image(image, conn_id) as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def head_of(image: str, limit: int, conn_id: str | None = None) -> bytes:
    """The first ``limit`` bytes of a staged-kind image."""
    with open_image(image, conn_id) as handle:
        return handle.read(limit)


def _included(relative: str, include: tuple[str, ...]) -> bool:
    name = relative.rsplit("/", 1)[-1].lower()
    return any(
        fnmatch.fnmatchcase(name, pattern.lower()) or fnmatch.fnmatchcase(relative, pattern)
        for pattern in include
    )


def _hidden(relative: str) -> bool:
    # Dot files (editors, macOS) and the provider's own folders are not images of the dataset.
    return any(part.startswith(".") or part.startswith("_vibedream") for part in relative.split("/"))


def walk_local(root: Path, include: tuple[str, ...]) -> Iterator[SourceImage]:
    """Every included file below ``root``, sorted, not following linked folders (a link out of the
    folder would make another part of the machine part of the dataset)."""
    found = []
    for folder, folders, files in os.walk(root, followlinks=False):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in files:
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if (
                path.is_file()
                and not path.is_symlink()
                and not _hidden(relative)
                and _included(relative, include)
            ):
                found.append(SourceImage(str(path), relative, size=path.stat().st_size))
    yield from sorted(found, key=lambda image: image.relative or "")


def walk_store(root: str, include: tuple[str, ...], conn_id: str | None) -> Iterator[SourceImage]:
    """Every included object below a store prefix ``ObjectStoragePath`` reads (not ``s3://``, which
    is listed with its ETags by :func:`~airflow_vibedream.files.s3.list_objects`)."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    base = ObjectStoragePath(root, conn_id=conn_id)
    found = []
    for path in base.rglob("*"):
        if not path.is_file():
            continue
        relative = str(PurePosixPath(str(path.path)).relative_to(PurePosixPath(str(base.path))))
        if not _hidden(relative) and _included(relative, include):
            found.append(SourceImage(f"{base.protocol}://{path.path}", relative))
    yield from sorted(found, key=lambda image: image.relative or "")


def list_source(source: str, include: tuple[str, ...], *, aws_conn_id: str | None) -> list[SourceImage]:
    """The images of a folder or prefix ``source``, each with its relative path.

    :raises VibeDreamValidationError: the folder does not exist (naming ``source``).
    """
    if source.startswith("s3://"):
        prefix = source if source.endswith("/") else source + "/"
        listed = list_objects(prefix, aws_conn_id=aws_conn_id)
        return [
            SourceImage(uri, uri[len(prefix) :], etag, size)
            for uri, etag, size in listed
            if _included(uri[len(prefix) :], include) and not _hidden(uri[len(prefix) :])
        ]
    path = local_file(source)
    if path is not None:
        if not path.is_dir():
            raise VibeDreamValidationError(
                f"source {source!r} is not a folder on this machine (a local source must be a directory "
                "the task's worker can read; or give a list of images, or an s3:// prefix)",
                field="source",
            )
        return list(walk_local(path.resolve(), include))
    return list(walk_store(source, include, aws_conn_id))


def input_file_name(image: str) -> str:
    """An image's file name, for an image of a list (which has no relative path): the last segment
    of its URL's or path's path, query left out."""
    path = image.split("?", 1)[0].split("#", 1)[0]
    return path.rstrip("/").rsplit("/", 1)[-1] or "image"


def dataset_name(relative: str, ext: str, *, keep_extension: bool = False) -> str:
    """The output's name in the dataset layout: the input's relative path, its extension replaced
    (or, with ``keep_extension``, kept before the output's). Each folder and the file name are kept
    as they are (spaces and non-ASCII letters too) unless a segment could leave ``output_path`` or
    hide (``..``, ``.``, empty, a backslash, a control character, a leading ``.`` or ``_``, which the
    provider's own folders use): such a segment is named by
    :func:`~airflow_vibedream.files.storage.safe_segment`."""
    parts = relative.split("/")
    if not keep_extension and "." in parts[-1].lstrip("."):
        parts[-1] = parts[-1].rsplit(".", 1)[0]
    kept = [part if _plain(part) else safe_segment(part) for part in parts]
    return "/".join(kept) + f".{ext}"


def _plain(part: str) -> bool:
    return (
        bool(part.strip())
        and part not in (".", "..")
        and not part.startswith((".", "_"))
        and "\\" not in part
        and all(ord(c) >= 32 and c != "\x7f" for c in part)
        and len(part.encode()) <= 200
    )


def dataset_names(relatives: list[str], ext: str) -> dict[str, str]:
    """Each input's output name in the dataset layout, collisions resolved the same way every run:
    when several inputs map to one name (``a.png`` and ``a.jpg`` to ``a.png``, compared without
    letter case), the first in sorted order keeps it and each other one keeps its own extension
    before the output's (``a.jpg`` -> ``a.jpg.png``)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for relative in sorted(set(relatives)):
        name = dataset_name(relative, ext)
        if name.lower() in taken:
            name = dataset_name(relative, ext, keep_extension=True)
        taken.add(name.lower())
        names[relative] = name
    return names


@dataclass
class Staging:
    """Where images the API cannot fetch are copied for the length of their jobs.

    :param staging_path: an ``s3://bucket/prefix``.
    :param folder: this task instance's folder below it (``dag/run/task[/map_i]``).
    :param aws_conn_id: the connection that writes there.
    """

    staging_path: str
    folder: str
    aws_conn_id: str | None

    @property
    def prefix(self) -> str:
        return f"{self.staging_path.rstrip('/')}/{self.folder}/"

    def stage(self, image: str, sha256: str) -> str:
        """Copy ``image`` (once per content: the name is its hash) and return its ``s3://`` URI."""
        from airflow_vibedream.files.s3 import s3_client, split_s3_uri

        suffix = PurePosixPath(image).suffix.lower()[:8]
        uri = f"{self.prefix}{sha256}{suffix}"
        bucket, key = split_s3_uri(uri)
        with open_image(image) as handle:
            s3_client(self.aws_conn_id).upload_fileobj(handle, bucket, key)
        return uri

    def clean(self) -> int:
        """Delete every object of this task instance's folder (this try's and any earlier try's)."""
        from airflow_vibedream.files.s3 import s3_client, split_s3_uri

        bucket, prefix = split_s3_uri(self.prefix)
        client = s3_client(self.aws_conn_id)
        deleted = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
        return deleted


def staging_folder(ti: Any) -> str:
    """A task instance's staging folder (each id one safe segment, as the outputs' folders)."""
    map_index = getattr(ti, "map_index", -1)
    suffix = f"/map_{map_index}" if isinstance(map_index, int) and map_index >= 0 else ""
    return f"{safe_segment(ti.dag_id)}/{safe_segment(ti.run_id)}/{safe_segment(ti.task_id)}{suffix}"


def read_image_bytes(image: str, *, aws_conn_id: str | None, policy: Any) -> bytes:
    """All of an input's bytes (an input resized locally): a local file or store object where it
    lies, an ``s3://`` object, or an http(s) URL within the connection's download bounds."""
    if needs_staging(image):
        with open_image(image, aws_conn_id) as handle:
            return handle.read()
    if image.startswith("s3://"):
        from airflow_vibedream.files.s3 import s3_client, split_s3_uri

        bucket, key = split_s3_uri(image)
        return bytes(s3_client(aws_conn_id).get_object(Bucket=bucket, Key=key)["Body"].read())
    import httpx

    from airflow_vibedream.files.downloads import download_chunks

    with httpx.Client(follow_redirects=False) as http:
        return b"".join(download_chunks(image, http, policy))
