"""Thumbnails made on the api-server with Pillow, in a small pool of its own, cached on disk.

The api-server's threads are Airflow's: a thumbnail never holds one. The routes await a pool of
:data:`WORKERS` threads with at most :data:`MAX_PENDING` thumbnails queued; when it is full the
request answers 503 with Retry-After at once. Inside the pool the source is streamed to a scratch
file under the cache (bounded in bytes and time, counted in the cache's size, and swept when an
earlier process crashed), Pillow opens only the formats the API accepts and produces (PNG, JPEG,
WebP, GIF: no ICO, TIFF or PSD container can hide an image in another), the pixel count is checked
on the header before any decoding, and JPEGs are decoded at a reduced scale (``draft``)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

from PIL import Image

#: The long edge of a thumbnail, in pixels.
THUMBNAIL_EDGE = 320
#: The largest image decoded: an 8K output (7680 x 4320) with room; a decompression bomb is refused.
MAX_PIXELS = 40_000_000
#: The image formats the gallery decodes: those the API accepts and produces.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
#: Threads that make thumbnails in one api-server process (each decode may need ~3 bytes per pixel).
WORKERS = 2
#: Thumbnails waiting or being made at once; beyond that a request answers 503 (a page has 24-48).
MAX_PENDING = 64
#: The cache is trimmed to this share of its limit, so that it is not trimmed at every write.
TRIM_TO = 0.8
#: Scratch files older than this are an earlier process's leftovers (a read takes seconds).
STALE_SCRATCH_SECONDS = 600

log = logging.getLogger(__name__)


class NotAnImage(Exception):
    """The source is no image the gallery shows (unknown format, undecodable, over the pixel limit)."""


class Busy(Exception):
    """The thumbnail pool is full: try again shortly."""


class ThumbnailCache:
    """A directory of thumbnails, with the scratch files being made in ``scratch/`` below it.

    :param directory: where they are kept (created when missing).
    :param max_bytes: the most the directory may hold, scratch files included.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.scratch = directory / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sweep_stale_scratch()

    def path_for(self, source: str) -> Path:
        digest = hashlib.sha256(f"{THUMBNAIL_EDGE}:{source}".encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.webp"

    def cached(self, source: str) -> Path | None:
        """The thumbnail of ``source`` if it is made already (marked recently used)."""
        path = self.path_for(source)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def make(self, source: str, read: Callable[[], AbstractContextManager[Iterator[bytes]]]) -> Path:
        """Make the thumbnail of ``source`` from ``read()``'s chunks (in the pool's thread)."""
        if (path := self.cached(source)) is not None:  # made by a request queued before this one
            return path
        self.trim()  # room for the scratch file first
        path = self.path_for(source)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=self.scratch, suffix=".part")
        original = Path(name)
        made = original.with_suffix(".webp")
        try:
            with read() as chunks, os.fdopen(handle, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
            make_thumbnail(original, made)
            os.replace(made, path)  # atomic: a reader never sees half a file
        finally:
            original.unlink(missing_ok=True)
            made.unlink(missing_ok=True)
        self.trim(keep=path)
        return path

    def size(self) -> int:
        return sum(size for size, _, _ in self._entries())

    def _entries(self) -> Iterator[tuple[int, float, Path]]:
        """(size, mtime, path) of every thumbnail and scratch file, skipping what another request
        deletes meanwhile."""
        try:
            folders = [entry.path for entry in os.scandir(self.directory) if entry.is_dir()]
        except FileNotFoundError:
            return
        for folder in folders:
            try:
                with os.scandir(folder) as files:
                    found = [
                        (e.stat().st_size, e.stat().st_mtime, Path(e.path)) for e in files if e.is_file()
                    ]
            except FileNotFoundError:
                continue
            yield from found

    def trim(self, keep: Path | None = None) -> None:
        """Delete the least recently used thumbnails while the cache (scratch included) is over its
        limit, never ``keep`` (the one just made for a waiting browser). Trimming never fails a
        request."""
        with self._lock:
            try:
                entries = list(self._entries())
            except OSError as exc:
                log.warning("VibeDream gallery: thumbnail cache not trimmed: %s", exc)
                return
            total = sum(size for size, _, _ in entries)
            if total <= self.max_bytes:
                return
            for size, _, entry in sorted(entries, key=lambda item: item[1]):
                if total <= self.max_bytes * TRIM_TO:
                    break
                if entry.parent == self.scratch or entry == keep:
                    continue  # being written right now, or just made: counted, not removed
                entry.unlink(missing_ok=True)
                total -= size

    def _sweep_stale_scratch(self) -> None:
        now = time.time()
        for entry in self.scratch.iterdir():
            try:
                if now - entry.stat().st_mtime > STALE_SCRATCH_SECONDS:
                    entry.unlink()
            except FileNotFoundError:
                continue


class ThumbnailPool:
    """The threads thumbnails are made in, with a bound on what may wait for them.

    :param workers: threads.
    :param max_pending: thumbnails queued or being made at once.
    """

    def __init__(self, workers: int = WORKERS, max_pending: int = MAX_PENDING) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vibedream-thumbnail")
        self._slots = threading.BoundedSemaphore(max_pending)

    async def run(self, work: Callable[[], Path], timeout: float) -> Path:
        """``work()`` in the pool, awaited without holding a thread; :class:`Busy` when the pool is
        full or the work takes longer than ``timeout`` (it then finishes in the background, bounded
        by its own read limits, and its thumbnail is cached for the next request)."""
        if not self._slots.acquire(blocking=False):
            raise Busy
        try:
            future = self._executor.submit(work)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
        except asyncio.TimeoutError:
            raise Busy from None


def make_thumbnail(source: Path, target: Path, edge: int = THUMBNAIL_EDGE) -> None:
    """Write a WebP thumbnail of the image in ``source`` to ``target``."""
    try:
        with Image.open(source, formats=FORMATS) as image:
            width, height = image.size  # from the header: nothing is decoded yet
            if width * height > MAX_PIXELS:
                raise NotAnImage(f"{width}x{height} pixels is over the gallery's limit ({MAX_PIXELS})")
            image.draft("RGB", (edge, edge))  # JPEG: decode at 1/2..1/8 scale; others: no-op
            image.thumbnail((edge, edge))
            image.convert("RGB").save(target, "WEBP", quality=80)
    except NotAnImage:
        raise
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as exc:
        raise NotAnImage(f"not an image the gallery shows: {type(exc).__name__}") from None
