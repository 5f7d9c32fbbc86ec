"""A batch manifest read one page at a time: streamed, never held whole, with a cap on its size and
on each line. A 10,000-line manifest is a few MB; a hostile one may be anything, so the gallery reads
at most ``max_bytes`` of it (pages past the cap are not shown, and the page says so), keeps only the
lines of the page asked for, and parses each line through :class:`ManifestLine`: a line that does
not parse is shown as unreadable, never trusted in part."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from airflow_vibedream.plugins.roots import Location
from airflow_vibedream.plugins.sources import CHUNK, ReadBounds, open_chunks
from airflow_vibedream.plugins.thumbnails import Busy
from airflow_vibedream.tasks.records import ManifestLine

#: The longest manifest line read (a line is a few hundred bytes).
MAX_LINE_BYTES = 64 * 1024
#: Pages kept parsed in memory (a page is 24 small lines).
PAGES_KEPT = 32
#: Manifests read at once in one api-server process; beyond that a request is told to come back.
MAX_READS = 4


@dataclass(frozen=True)
class ManifestPage:
    """One page of a manifest.

    :param lines: (line number, the line, or None when it does not parse) for the page's lines.
    :param total: lines counted in the part read.
    :param truncated: the manifest is larger than the gallery reads; later lines are not counted.
    """

    lines: list[tuple[int, ManifestLine | None]]
    total: int
    truncated: bool


def _raw_lines(chunks: Iterator[bytes], max_bytes: int) -> Iterator[bytes | None]:
    """Each non-empty line (None for one over :data:`MAX_LINE_BYTES`), up to ``max_bytes`` read;
    a last item ``b""`` says the cap was reached."""
    pending = b""
    over_long = False
    read = 0
    for chunk in chunks:
        capped = read + len(chunk) > max_bytes
        chunk = chunk[: max_bytes - read]
        read += len(chunk)
        pieces = (pending + chunk).split(b"\n")
        pending = pieces.pop()
        for piece in pieces:
            if over_long:
                over_long = False
                yield None
            elif piece.strip():
                yield piece
        if len(pending) > MAX_LINE_BYTES:
            pending, over_long = b"", True
        if capped:
            yield b""
            return
    if over_long:
        yield None
    elif pending.strip():
        yield pending


def _parse(raw: bytes | None) -> ManifestLine | None:
    if raw is None:
        return None
    try:
        return ManifestLine.parse(json.loads(raw))
    except ValueError:
        return None


def read_page(location: Location, bounds: ReadBounds, *, start: int, count: int) -> ManifestPage:
    """Lines ``start`` to ``start + count`` of the manifest at ``location``, and how many there are."""
    lines: list[tuple[int, ManifestLine | None]] = []
    total = 0
    truncated = False
    # The cap is enforced here (a truncated page), not by the read bound (which would fail it).
    with open_chunks(location, ReadBounds(bounds.max_bytes + CHUNK, bounds.seconds)) as chunks:
        for raw in _raw_lines(chunks, bounds.max_bytes):
            if raw == b"":
                truncated = True
                break
            if start <= total < start + count:
                lines.append((total, _parse(raw)))
            total += 1
    return ManifestPage(lines, total, truncated)


class ManifestPages:
    """The most recently read pages, keyed by the manifest's URI, its record's time and the page.

    :param bounds: the read bounds of a manifest.
    :param per_page: lines per page.
    """

    def __init__(self, bounds: ReadBounds, per_page: int) -> None:
        self.bounds = bounds
        self.per_page = per_page
        self._kept: OrderedDict[tuple[str, float, int], ManifestPage] = OrderedDict()
        self._lock = threading.Lock()
        self._reading = threading.BoundedSemaphore(MAX_READS)

    def page(self, location: Location, version: float, number: int) -> ManifestPage:
        """Page ``number`` (from 1) of the manifest at ``location`` as of ``version``."""
        key = (str(location), version, number)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        # Each read streams up to the cap in one of Airflow's threads: a few at once, never a crowd.
        if not self._reading.acquire(blocking=False):
            raise Busy
        try:
            page = read_page(location, self.bounds, start=(number - 1) * self.per_page, count=self.per_page)
        finally:
            self._reading.release()
        with self._lock:
            self._kept[key] = page
            while len(self._kept) > PAGES_KEPT:
                self._kept.popitem(last=False)
        return page

    def line(self, location: Location, version: float, number: int) -> ManifestLine | None:
        """Line ``number`` (from 0), None when there is no such readable line."""
        page = self.page(location, version, number // self.per_page + 1)
        return next((line for index, line in page.lines if index == number), None)
