"""The gallery's parts without a server: records, links, local-file rules, thumbnails and pages."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from airflow_vibedream.errors import OutputStorageError
from airflow_vibedream.plugins import pages, thumbnails
from airflow_vibedream.plugins.links import VibeDreamGalleryLink, VibeDreamManifestLink, VibeDreamOutputLink
from airflow_vibedream.plugins.queries import BATCH, IMAGE, Filters, ResultRow, Totals
from airflow_vibedream.plugins.records import FINISHED, BatchProgress, image_record
from airflow_vibedream.plugins.sources import SourceRefused, SourceRules, media_type
from airflow_vibedream.plugins.thumbnails import ThumbnailCache, make_thumbnail

TI_KEY = SimpleNamespace(dag_id="d", run_id="manual__2026-01-01T00:00:00+00:00", task_id="t", map_index=3)


def png(path: Path, size: tuple[int, int] = (640, 480)) -> Path:
    Image.new("RGB", size, (200, 30, 90)).save(path, "PNG")
    return path


def test_image_record_keeps_the_input_as_named_never_a_presigned_url() -> None:
    record = image_record(
        prediction={"id": "p1", "model_id": "image-upscaler", "outputs": ["s3://b/o.png"], "cost_cents": 2},
        asked={"image": "s3://in/cat.png", "target_resolution": "4k", "output_format": "png"},
        files=[{"uri": "s3://b/o.png", "bytes": 10, "width": 3840, "height": 2880, "format": "PNG"}],
        input_conn_id="aws_default",
        output_conn_id="aws_default",
        vibedream_conn_id="vibedream_default",
    )
    assert record["input"] == "s3://in/cat.png" and record["target_resolution"] == "4k"
    assert record["outputs"] == ["s3://b/o.png"] and record["cost_cents"] == 2
    assert "Signature" not in str(record)


def test_batch_progress_round_trips_and_refuses_junk() -> None:
    progress = BatchProgress(images=10, jobs=9, unsubmitted=1, cost_cents=18)
    later = progress.advanced(done=4, failed=1)
    assert (later.done, later.failed, later.jobs, progress.done) == (4, 1, 9, 0)
    assert BatchProgress.from_json(later.to_json()) == later
    assert BatchProgress.from_json({"images": "many"}) is None and BatchProgress.from_json([1]) is None


def test_links_point_at_the_gallery_app_for_the_task_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/team/")
    url = VibeDreamOutputLink().get_link(None, ti_key=TI_KEY)
    assert url.startswith("https://airflow.example.com/team/vibedream/output?dag_id=d&run_id=manual__")
    assert url.endswith("&task_id=t&map_index=3")
    assert "/vibedream/manifest?" in VibeDreamManifestLink().get_link(None, ti_key=TI_KEY)
    assert "/vibedream/batch?" in VibeDreamGalleryLink().get_link(None, ti_key=TI_KEY)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")
    assert VibeDreamOutputLink().get_link(None, ti_key=TI_KEY).startswith("/vibedream/output?")


def test_local_files_only_under_the_roots(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    root.mkdir()
    inside = png(root / "a.png")
    outside = png(tmp_path / "secret.png")
    (root / "link.png").symlink_to(outside)
    rules = SourceRules(local_roots=(root.resolve(),))
    assert rules.local_file(str(inside)) == inside.resolve()
    assert rules.local_file(f"file://{inside}") == inside.resolve()
    for escape in (str(outside), f"{root}/../secret.png", str(root / "link.png"), "/etc/passwd"):
        with pytest.raises(SourceRefused, match="gallery_local_roots"):
            rules.local_file(escape)
    with pytest.raises(SourceRefused):
        SourceRules().local_file(str(inside))  # no roots configured: nothing local is served


def test_thumbnails_are_small_cached_and_trimmed(tmp_path: Path) -> None:
    source = png(tmp_path / "big.png", (2048, 1536))
    cache = ThumbnailCache(tmp_path / "cache", max_bytes=10_000_000)
    reads = []

    def read(path: Path = source):  # type: ignore[no-untyped-def]
        import contextlib

        reads.append(path)
        return contextlib.nullcontext(iter([path.read_bytes()]))

    first = cache.get("s3://b/big.png#p1", read)
    assert cache.get("s3://b/big.png#p1", read) == first and len(reads) == 1  # the second is cached
    with Image.open(first) as thumb:
        assert thumb.format == "WEBP" and max(thumb.size) == thumbnails.THUMBNAIL_EDGE
        assert thumb.size == (320, 240)
    # Over its limit, the cache keeps the newest and drops the oldest.
    cache.max_bytes = first.stat().st_size + 10
    newer = cache.get("s3://b/other.png#p2", read)
    assert newer.exists() and not first.exists()


def test_thumbnails_made_at_once_by_many_requests_all_succeed(tmp_path: Path) -> None:
    # A gallery page asks for all its thumbnails at once. Each request makes its thumbnail in a
    # scratch folder inside the cache, then trims the cache: the trim once listed the other requests'
    # scratch folders as they were removed and failed them with FileNotFoundError (404 thumbnails).
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    data = png(tmp_path / "src.png", (400, 300)).read_bytes()
    cache = ThumbnailCache(tmp_path / "cache", max_bytes=256 * 1024 * 1024)
    with ThreadPoolExecutor(16) as pool:
        made = list(
            pool.map(lambda n: cache.get(f"src-{n}", lambda: contextlib.nullcontext(iter([data]))), range(64))
        )
    assert len(set(made)) == 64 and all(path.exists() for path in made)
    assert cache.size() == sum(path.stat().st_size for path in made)  # scratch folders are not counted


def test_oversized_or_non_images_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(thumbnails, "MAX_PIXELS", 1000)
    with pytest.raises(OutputStorageError, match="over the gallery's limit"):
        make_thumbnail(png(tmp_path / "a.png", (100, 100)), tmp_path / "t.webp")
    (tmp_path / "n.png").write_text("not an image")
    with pytest.raises(OutputStorageError, match="not an image"):
        make_thumbnail(tmp_path / "n.png", tmp_path / "t.webp")


def row(kind: str, value: dict[str, object], dag_id: str = "d") -> ResultRow:
    return ResultRow(kind, dag_id, "r1", "t", -1, datetime(2026, 11, 24, 8, tzinfo=timezone.utc), value)


def test_pages_escape_every_value_and_link_back_into_airflow() -> None:
    hostile = '<script>alert("x")</script>'
    html = pages.gallery_page(
        [
            row(IMAGE, {"prediction_id": hostile, "input": hostile, "cost_cents": 2}, dag_id=hostile),
            row(BATCH, BatchProgress(images=3, jobs=3, done=2, cost_cents=6, state=FINISHED).to_json()),
        ],
        Totals(2, {hostile: 2.0, "d": 6.0}, {"2026-11-24": 8.0}),
        Filters(dag_id=None),
        [hostile, "d"],
        page_number=1,
        per_page=24,
        root="/airflow",
    )
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'target="_top" href="/airflow/dags/d/runs/r1/tasks/t"' in html
    assert 'data-testid="total-cost">8¢' in html and 'data-done="2"' in html
    assert "http" not in html.split("<body>")[0]  # no external asset in the head


def test_media_types() -> None:
    assert (
        media_type("s3://b/x.PNG") == "image/png"
        and media_type("/x/manifest.jsonl") == "application/x-ndjson"
    )
    assert media_type("file:///x/y") == "application/octet-stream"


def test_png_helper_is_a_png(tmp_path: Path) -> None:
    assert Image.open(io.BytesIO(png(tmp_path / "x.png").read_bytes())).format == "PNG"
