"""Thumbnails made on the api-server with Pillow, cached on disk under a size limit.

Memory stays bounded: the source is streamed to a temporary file (never held in memory), Pillow
reads the header first and refuses images over :data:`MAX_PIXELS`, JPEGs are decoded at a reduced
scale (``draft``), and at most :data:`DECODERS` thumbnails are decoded at once however many browsers
ask. The cache is content-addressed by the source URI (outputs never change under one prediction id)
and trimmed, oldest first, when it grows past its limit."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from PIL import Image

from airflow_vibedream.errors import OutputStorageError

#: The long edge of a thumbnail, in pixels.
THUMBNAIL_EDGE = 320
#: The largest image decoded: an 8K output (7680 x 4320) with room; a decompression bomb is refused.
MAX_PIXELS = 40_000_000
#: Thumbnails decoded at once in one api-server process (each may need ~3 bytes per pixel).
DECODERS = 2
#: The cache is trimmed to this share of its limit, so that it is not trimmed at every write.
TRIM_TO = 0.8

_decoding = threading.BoundedSemaphore(DECODERS)
log = logging.getLogger(__name__)


class ThumbnailCache:
    """A directory of thumbnails.

    :param directory: where they are kept (created when missing).
    :param max_bytes: the most the directory may hold.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def path_for(self, source: str) -> Path:
        digest = hashlib.sha256(f"{THUMBNAIL_EDGE}:{source}".encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.webp"

    def get(self, source: str, read: Callable[[], AbstractContextManager[Iterator[bytes]]]) -> Path:
        """The thumbnail of ``source``, made from ``read()``'s chunks when not cached yet."""
        path = self.path_for(source)
        try:
            os.utime(path)  # cached; recently used: trimmed last
            return path
        except FileNotFoundError:  # not made yet, or trimmed just now
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.directory) as scratch:
            original = Path(scratch) / "source"
            with read() as chunks, original.open("wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
            thumbnail = Path(scratch) / "thumbnail.webp"
            make_thumbnail(original, thumbnail)
            os.replace(thumbnail, path)  # atomic: a reader never sees half a file
        self.trim(keep=path)
        return path

    def size(self) -> int:
        return sum(stat.st_size for stat, _ in self._entries())

    def _entries(self) -> Iterator[tuple[os.stat_result, Path]]:
        """The cached thumbnails with their stats: only the two-character shard folders (never a
        request's scratch folder), skipping what another request deletes meanwhile."""
        try:
            shards = [entry.path for entry in os.scandir(self.directory) if len(entry.name) == 2]
        except FileNotFoundError:
            return
        for shard in shards:
            try:
                with os.scandir(shard) as files:
                    found = [
                        (entry.stat(), Path(entry.path)) for entry in files if entry.name.endswith(".webp")
                    ]
            except FileNotFoundError:  # a shard or a file trimmed by another request
                continue
            yield from found

    def trim(self, keep: Path | None = None) -> None:
        """Delete the least recently used thumbnails while the cache is over its limit (never
        ``keep``, the one just made for a waiting browser). Trimming never fails a request: the
        thumbnail it made is already in place."""
        with self._lock:
            try:
                entries = list(self._entries())
            except OSError as exc:
                log.warning("VibeDream gallery: thumbnail cache %s not trimmed: %s", self.directory, exc)
                return
            total = sum(stat.st_size for stat, _ in entries)
            if total <= self.max_bytes:
                return
            for stat, entry in sorted(entries, key=lambda item: item[0].st_mtime):
                if total <= self.max_bytes * TRIM_TO:
                    break
                if entry == keep:
                    continue
                entry.unlink(missing_ok=True)
                total -= stat.st_size


def make_thumbnail(source: Path, target: Path, edge: int = THUMBNAIL_EDGE) -> None:
    """Write a WebP thumbnail of the image in ``source`` to ``target``."""
    with _decoding:
        try:
            with Image.open(source) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise OutputStorageError(
                        f"image of {width}x{height} pixels is over the gallery's limit ({MAX_PIXELS} pixels)"
                    )
                image.draft("RGB", (edge, edge))  # JPEG: decode at 1/2..1/8 scale; others: no-op
                image.thumbnail((edge, edge))
                image.convert("RGB").save(target, "WEBP", quality=80)
        except (OSError, Image.DecompressionBombError, ValueError) as exc:
            raise OutputStorageError(f"not an image the gallery can show: {exc}") from exc
