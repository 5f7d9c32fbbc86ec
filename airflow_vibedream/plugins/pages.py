"""The gallery's HTML, rendered by Jinja2 with auto-escaping from the templates beside this module.

Nothing a record says becomes markup or a link target: record values are text (escaped by the
engine), and every ``href``/``src`` is one of the gallery's own routes or Airflow's UI, built here
from the task instance's identity with each path segment quoted. The pages carry no script; the
app serves them with a Content-Security-Policy that allows none (see :mod:`.app`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined

from airflow_vibedream.plugins.queries import Filters, Totals
from airflow_vibedream.tasks.records import FINISHED, BatchProgress, ImageResult, ManifestLine

#: The stylesheet, relative to the pages (served by the app; no inline style, no CDN).
STYLESHEET = "static/gallery.css"


def human_bytes(size: Any) -> str:
    if not isinstance(size, int) or isinstance(size, bool):
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def cents(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "?"
    return f"{value:g}¢"


def duration(created_at: str | None, completed_at: str | None) -> str:
    try:
        seconds = (
            datetime.fromisoformat(str(completed_at)) - datetime.fromisoformat(str(created_at))
        ).total_seconds()
    except (TypeError, ValueError):
        return "?"
    return f"{seconds:.1f}s"


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("airflow_vibedream.plugins", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["cents"] = cents
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(stylesheet=STYLESHEET, **context)


def ui_root(base_url: str) -> str:
    """The path Airflow's UI is served under (``[api] base_url``'s path)."""
    return urlsplit(base_url).path.rstrip("/") if base_url else ""


@dataclass(frozen=True)
class TaskInstanceRef:
    """A task instance (from the database row, never from a record), with links into Airflow's UI.

    :param dag_id: its DAG.
    :param run_id: its run.
    :param task_id: its task.
    :param map_index: its map index (-1: not mapped).
    :param root: the UI's path prefix.
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    root: str = ""

    @property
    def label(self) -> str:
        return self.task_id + (f"[{self.map_index}]" if self.map_index >= 0 else "")

    @property
    def dag_url(self) -> str:
        return f"{self.root}/dags/{quote(self.dag_id, safe='')}"

    @property
    def run_url(self) -> str:
        return f"{self.dag_url}/runs/{quote(self.run_id, safe='')}"

    @property
    def task_url(self) -> str:
        mapped = f"/mapped/{self.map_index}" if self.map_index >= 0 else ""
        return f"{self.run_url}/tasks/{quote(self.task_id, safe='')}{mapped}"

    def query(self, **extra: Any) -> dict[str, Any]:
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "map_index": self.map_index,
        } | {key: value for key, value in extra.items() if value is not None}

    def route(self, path: str, **extra: Any) -> str:
        """A gallery route about this task instance, relative to the pages."""
        return f"{path}?{urlencode(self.query(**extra))}"


@dataclass(frozen=True)
class Picture:
    """One side of a before/after pair.

    :param thumb: the thumbnail route, when the image lies under a gallery root.
    :param note: what is shown instead of a thumbnail.
    :param text: the location as the record named it (shown as text, never followed).
    """

    thumb: str | None
    note: str = ""
    text: str = ""


def picture(
    uri: str | None, servable: bool, thumb: str, refusal: str = "not under a gallery root"
) -> Picture:
    """The thumbnail of a servable image, else a note with the location as text.

    :param refusal: why an image that is no http(s) URL is not shown (the roots' rule that kept it
        out, see :meth:`~airflow_vibedream.plugins.roots.GalleryRoots.refusal`).
    """
    if servable:
        return Picture(thumb)
    if not uri:
        return Picture(None, "no image", "")
    external = uri.lower().startswith(("http://", "https://"))
    return Picture(None, "external image (not fetched)" if external else refusal, uri)


@dataclass(frozen=True)
class ImageCard:
    """A single image's result in the gallery."""

    ti: TaskInstanceRef
    record: ImageResult
    input: Picture
    output: Picture
    open: str | None
    when: str
    kind: str = "image"

    @property
    def details(self) -> list[str]:
        record = self.record
        first = record.files[0] if record.files else None
        size = f"{first.width}x{first.height}" if first and first.width and first.height else "?"
        return [
            record.target_resolution or "?",
            size,
            (first.format if first and first.format else None) or record.output_format or "?",
            human_bytes(first.bytes if first else None),
            cents(record.cost_cents),
            duration(record.created_at, record.completed_at),
        ]


@dataclass(frozen=True)
class BatchCard:
    """A batch in the gallery."""

    ti: TaskInstanceRef
    progress: BatchProgress
    kind: str = "batch"

    @property
    def page(self) -> str:
        return self.ti.route("batch")


@dataclass(frozen=True)
class LineView:
    """One manifest line on a batch page (``entry`` None: the line does not parse)."""

    number: int
    entry: ManifestLine | None
    input: Picture
    output: Picture


def gallery_page(
    cards: list[ImageCard | BatchCard],
    totals: Totals,
    filters: Filters,
    dag_ids: list[str],
    *,
    page_number: int,
    per_page: int,
    skipped: int,
) -> str:
    base = {
        k: v
        for k, v in {"dag_id": filters.dag_id, "since": filters.since, "until": filters.until}.items()
        if v
    }
    newer = f"?{urlencode(base | {'page': page_number - 1})}" if page_number > 1 else None
    older = (
        f"?{urlencode(base | {'page': page_number + 1})}" if page_number * per_page < totals.entries else None
    )
    return render(
        "gallery.html",
        title="VibeDream gallery",
        refresh=None,
        cards=cards,
        totals=totals,
        filters=filters,
        dag_ids=dag_ids,
        page_number=page_number,
        pages=max(1, -(-totals.entries // per_page)),
        newer=newer,
        older=older,
        skipped=skipped,
    )


def batch_page(
    ti: TaskInstanceRef,
    progress: BatchProgress,
    lines: list[LineView],
    *,
    page_number: int,
    has_next: bool,
    truncated: bool,
    manifest_error: str | None,
) -> str:
    running = progress.state != FINISHED
    return render(
        "batch.html",
        title="VibeDream batch",
        refresh=5 if running else None,
        ti=ti,
        progress=progress,
        lines=lines,
        running=running,
        manifest_error=manifest_error,
        truncated=truncated,
        manifest_link=ti.route("manifest"),
        gallery_link="gallery",
        previous=ti.route("batch", page=page_number - 1) if page_number > 1 else None,
        next=ti.route("batch", page=page_number + 1) if has_next else None,
    )
