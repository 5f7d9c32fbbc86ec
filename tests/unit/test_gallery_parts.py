"""The gallery's parts without a server: records, links, roots, race-free local reads, thumbnails,
manifests and pages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import threading
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from airflow_vibedream.files.storage import safe_segment
from airflow_vibedream.jobs.ledger.documents import LEDGER_DIR
from airflow_vibedream.links import VibeDreamGalleryLink, VibeDreamManifestLink, VibeDreamOutputLink
from airflow_vibedream.plugins import pages
from airflow_vibedream.plugins.manifests import MAX_LINE_BYTES, read_page
from airflow_vibedream.plugins.queries import Filters, Totals
from airflow_vibedream.plugins.roots import GalleryRoots, LocalLocation, RootsConfigError, StoreLocation
from airflow_vibedream.plugins.sources import ReadBounds, SourceUnavailable, media_type, open_chunks
from airflow_vibedream.plugins.thumbnails import (
    Busy,
    NotAnImage,
    ThumbnailCache,
    ThumbnailPool,
    make_thumbnail,
)
from airflow_vibedream.tasks.records import (
    FINISHED,
    BatchProgress,
    ImageResult,
    ManifestLine,
    image_record,
)

TI_KEY = SimpleNamespace(dag_id="d", run_id="manual__2026-01-01T00:00:00+00:00", task_id="t", map_index=3)


def png(path: Path, size: tuple[int, int] = (640, 480)) -> Path:
    Image.new("RGB", size, (200, 30, 90)).save(path, "PNG")
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few dozen bytes (a decompression bomb's
    header): a gallery that decoded before checking the size would allocate gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


# -- records -------------------------------------------------------------------------------------


def test_image_record_keeps_the_input_as_named_and_no_connection() -> None:
    record = image_record(
        prediction={"id": "p1", "model_id": "image-upscaler", "outputs": ["s3://b/o.png"], "cost_cents": 2},
        asked={"image": "s3://in/cat.png", "target_resolution": "4k", "output_format": "png"},
        files=[{"uri": "s3://b/o.png", "bytes": 10, "width": 3840, "height": 2880, "format": "PNG"}],
    )
    assert record["input"] == "s3://in/cat.png" and record["target_resolution"] == "4k"
    assert record["outputs"] == ["s3://b/o.png"] and record["cost_cents"] == 2
    assert not any("conn" in key for key in record)
    assert ImageResult.parse(record) is not None


def test_image_record_never_copies_base64_outputs_and_never_fails() -> None:
    record = image_record(
        prediction={"id": "p1", "outputs": ["iVBORw0KGgo" * 5000, "data:image/png;base64,AAAA"]},
        asked={"image": 42},
        files=None,
    )
    assert record["outputs"] == ["(inline output)", "(inline output)"] and record["input"] is None


@pytest.mark.parametrize(
    "value",
    [
        {"images": "many"},
        [1],
        "x",
        {"images": 3, "done": "<script>"},
        {"images": 3, "jobs": -1},
        {"images": 3, "cost_cents": float("nan")},
        {"images": 3, "state": "<b>"},
        {"images": True},
        {"images": 3, "manifest": ["s3://b/m"]},
    ],
)
def test_batch_progress_refuses_junk(value: object) -> None:
    assert BatchProgress.from_json(value) is None


def test_batch_progress_round_trips() -> None:
    progress = BatchProgress(images=10, jobs=9, unsubmitted=1, cost_cents=18)
    later = progress.advanced(done=4, failed=1)
    assert (later.done, later.failed, later.jobs, progress.done) == (4, 1, 9, 0)
    assert BatchProgress.from_json(later.to_json()) == later
    done = later.finished(completed_images=8, manifest="s3://b/m.jsonl")
    assert done.state == FINISHED and BatchProgress.from_json(json.loads(json.dumps(done.to_json()))) == done


def test_records_ignore_connection_fields_an_older_or_hostile_writer_added() -> None:
    written = {"prediction_id": "p", "output_conn_id": "metadata_db", "vibedream_conn_id": "x"}
    record = ImageResult.parse(written)
    assert record is not None and "conn" not in json.dumps(record.to_json())


# -- links ---------------------------------------------------------------------------------------


def test_links_point_at_the_gallery_app_for_the_task_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/team/")
    url = VibeDreamOutputLink().get_link(None, ti_key=TI_KEY)
    assert url.startswith("https://airflow.example.com/team/vibedream/output?dag_id=d&run_id=manual__")
    assert url.endswith("&task_id=t&map_index=3")
    assert "/vibedream/manifest?" in VibeDreamManifestLink().get_link(None, ti_key=TI_KEY)
    assert "/vibedream/batch?" in VibeDreamGalleryLink().get_link(None, ti_key=TI_KEY)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")
    assert VibeDreamOutputLink().get_link(None, ti_key=TI_KEY).startswith("/vibedream/output?")


# -- roots ---------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "outputs"
    (directory / "d").mkdir(parents=True)  # the DAG "d"'s folder
    png(directory / "d" / "a.png")
    return directory


def roots_for(root: Path) -> GalleryRoots:
    return GalleryRoots.parse(json.dumps({str(root): None, "s3://bucket/out/": "aws_out", "gs://g/x": "gcp"}))


def test_roots_locate_only_what_lies_beneath_them(root: Path) -> None:
    roots = roots_for(root)
    for uri in (f"file://{root}/d/a.png", f"{root}/d/a.png"):
        assert roots.locate(uri, "d") == LocalLocation(roots.local[0], ("d", "a.png"))
    found = roots.locate("s3://bucket/out/d/r/t/p-0.png", "d")
    assert (
        isinstance(found, StoreLocation)
        and found.root.conn_id == "aws_out"
        and found.key == "out/d/r/t/p-0.png"
    )
    assert isinstance(roots.locate("gs://g/x/d/y.png", "d"), StoreLocation)


@pytest.mark.parametrize(
    "uri",
    [
        "/etc/passwd",
        "file:///etc/passwd",
        "local:///proc/self/environ",
        "LOCAL:///proc/self/environ",
        "FILE://{root}/d/a.png",
        "File://{root}/d/a.png",
        "file://localhost{root}/d/a.png",
        "file:{root}/d/a.png",
        "{root}/d/../../secret",
        "{root}/d/./a.png",
        "{root}//d/a.png",
        "{root}/run\\a.png",
        "{root}/d/a.png\x00.jpg",
        "{root}",
        "{root}/",
        "{root}-sibling/a.png",
        "s3://bucket/other/a.png",
        "S3://bucket/out/a.png",
        "s3://bucket/out/../secret.png",
        "s3://bucket/out/a.png?versionId=1",
        "s3://bucket/out/a.png#x",
        "s3://bucket/out/",
        "s3://bucket2/out/a.png",
        "s3a://bucket/out/a.png",
        "http://127.0.0.1/x.png",
        "HTTP://127.0.0.1/x.png",
        "https://assets.vibedream.ai/outputs/x.png",
        "memory://bucket/out/a.png",
        "osfs:///etc/passwd",
        "//etc/passwd",
        "",
    ],
)
def test_roots_refuse_every_other_location(root: Path, uri: str) -> None:
    assert roots_for(root).locate(uri.format(root=root), "d") is None


def test_roots_are_per_dag_unless_shared(root: Path) -> None:
    roots = GalleryRoots.parse(
        json.dumps({str(root): None, "s3://in/photos/": {"conn_id": "aws_in", "shared": True}})
    )
    assert roots.locate(f"{root}/d/a.png", "d") is not None
    assert roots.locate(f"{root}/d/a.png", "other") is None  # another DAG's record: not its folder
    assert roots.locate(f"{root}/a.png", "d") is None  # beside the DAG folders
    shared = roots.locate("s3://in/photos/cat.png", "any_dag")
    assert isinstance(shared, StoreLocation) and shared.root.conn_id == "aws_in" and shared.root.shared
    with pytest.raises(RootsConfigError):
        GalleryRoots.parse(json.dumps({str(root): {"conn_id": None, "shared": "yes"}}))


def test_a_root_set_to_the_parent_of_output_path_shows_nothing_and_says_which_rule(tmp_path: Path) -> None:
    # What a user does first: the operators store under <output_path>/<dag folder>/..., and the root
    # is set one level up. The per-DAG rule keeps the image out; the refusal says so and how to fix
    # it, naming the root by its place in the setting, never by its path on the api-server.
    output_path = tmp_path / "home" / "outputs"
    image = f"{output_path}/my_dag/manual__1/upscale/p-0.png"
    roots = GalleryRoots.parse(json.dumps({"s3://other/": "aws", str(tmp_path / "home"): None}))
    assert roots.locate(image, "my_dag") is None
    said = roots.refusal(image, "my_dag")
    assert said.startswith("not under gallery root #2/my_dag/ ") and "shared" in said
    assert str(tmp_path) not in said
    # The fix it names works: the root is output_path itself (or the root is shared).
    assert GalleryRoots.parse(json.dumps({str(output_path): None})).locate(image, "my_dag") is not None
    shared = {str(tmp_path / "home"): {"conn_id": None, "shared": True}}
    assert GalleryRoots.parse(json.dumps(shared)).locate(image, "my_dag") is not None


def test_a_refusal_names_a_root_by_its_name_or_uri_and_a_dag_by_its_folder(root: Path) -> None:
    roots = GalleryRoots.parse(
        json.dumps(
            {
                str(root): {"conn_id": None, "name": "team outputs"},
                "s3://bucket/out/": "aws_out",
                str(root / "inner"): None,
            }
        )
    )
    folder = safe_segment("odd:dag")
    assert roots.refusal(f"{root}/elsewhere/a.png", "odd:dag").startswith(f"not under team outputs/{folder}/")
    assert roots.refusal("s3://bucket/out/x/a.png", "d").startswith("not under s3://bucket/out/d/")
    # Under two roots: the innermost one is named.
    assert roots.refusal(f"{root}/inner/x/a.png", "d").startswith("not under gallery root #3/d/")
    # Outside every root, or refused on its text: said plainly.
    for uri in ("/etc/passwd", f"{root}/../x.png", "local:///x", None, "s3://bucket/elsewhere/a.png"):
        assert roots.refusal(uri, "d") == "not under a gallery root"
    with pytest.raises(RootsConfigError):
        GalleryRoots.parse(json.dumps({str(root): {"conn_id": None, "name": "a\nb"}}))


def test_the_gallery_page_says_which_rule_kept_an_image_out() -> None:
    refused = pages.picture("/srv/x/other/a.png", False, "thumb?x", refusal="not under gallery root #1/d/ …")
    assert refused.thumb is None and refused.note == "not under gallery root #1/d/ …"
    assert pages.picture("https://e.com/a.png", False, "thumb").note == "external image (not fetched)"


@pytest.mark.parametrize("victim", ["reports", "reports_", "_reports", "reports.", "reports:x", "a/b"])
def test_a_dag_whose_id_cleans_like_anothers_cannot_read_its_folder(tmp_path: Path, victim: str) -> None:
    # Team B picks a DAG id that cleaning would have folded into team A's folder name.
    root = tmp_path / "outputs"
    roots = GalleryRoots.parse(json.dumps({str(root): None, "s3://bucket/out/": "aws_out"}))
    folder = safe_segment(victim)
    attackers = [
        "reports",
        "reports_",
        "_reports",
        ".reports",
        "reports.",
        "reports:x",
        "reports/x",
        "a_b",
        "a:b",
    ]
    for attacker in (a for a in attackers if a != victim):
        assert roots.locate(f"{root}/{folder}/run/t/p-0.png", attacker) is None, (attacker, folder)
        assert roots.locate(f"s3://bucket/out/{folder}/run/t/manifest.jsonl", attacker) is None
    assert roots.locate(f"{root}/{folder}/run/t/p-0.png", victim) is not None  # its own folder: served
    # No DAG reads the ledger beside the DAGs' folders.
    for dag_id in (LEDGER_DIR, LEDGER_DIR.strip("_"), f"{LEDGER_DIR}_"):
        assert roots.locate(f"{root}/{LEDGER_DIR}/entries/k.json", dag_id) is None


@pytest.mark.parametrize("value", [None, 3, ["/x"], {"a": "b"}])
def test_roots_refuse_other_types(root: Path, value: object) -> None:
    assert roots_for(root).locate(value, "d") is None


@pytest.mark.parametrize(
    "setting",
    ["not json", "[]", '{"s3://": "x"}', '{"local:///x": null}', '{"s3://b/../x": "c"}', '{"/x": 3}'],
)
def test_a_broken_roots_setting_is_an_error(setting: str) -> None:
    with pytest.raises(RootsConfigError):
        GalleryRoots.parse(setting)


def test_no_roots_means_nothing_is_served(root: Path) -> None:
    assert GalleryRoots.parse("").locate(f"{root}/d/a.png", "d") is None


# -- race-free local reads ----------------------------------------------------------------------


def read_all(location: object, bounds: ReadBounds | None = None) -> bytes:
    with open_chunks(location, bounds or ReadBounds()) as chunks:  # type: ignore[arg-type]
        return b"".join(chunks)


def test_local_reads_follow_no_symlink_and_open_no_fifo(root: Path, tmp_path: Path) -> None:
    roots = roots_for(root)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    (root / "d" / "link.png").symlink_to(secret)
    (root / "d" / "linkdir").symlink_to(tmp_path)
    os.mkfifo(root / "d" / "pipe.png")
    assert read_all(roots.locate(f"{root}/d/a.png", "d")).startswith(b"\x89PNG")
    for name in ("link.png", "linkdir/secret.txt", "pipe.png", "missing.png"):
        with pytest.raises(SourceUnavailable) as caught:
            read_all(roots.locate(f"{root}/d/{name}", "d"))
        assert str(tmp_path) not in str(caught.value)  # no server path in what the browser is told


def test_a_directory_swapped_for_a_symlink_after_the_check_is_not_followed(
    root: Path, tmp_path: Path
) -> None:
    # The check is on the text; the open walks the real tree from the root's descriptor. A swap
    # between the two (run/ becomes a symlink to /) finds a symlink and refuses it.
    roots = roots_for(root)
    location = roots.locate(f"{root}/d/a.png", "d")
    (tmp_path / "elsewhere").mkdir()
    png(tmp_path / "elsewhere" / "a.png")
    (root / "d").rename(tmp_path / "moved")
    (root / "d").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SourceUnavailable):
        read_all(location)


def test_reads_are_bounded(root: Path) -> None:
    location = roots_for(root).locate(f"{root}/d/a.png", "d")
    with pytest.raises(SourceUnavailable, match="Larger than"):
        read_all(location, ReadBounds(max_bytes=10))


# -- thumbnails ----------------------------------------------------------------------------------


def reader(data: bytes):  # type: ignore[no-untyped-def]
    return lambda: contextlib.nullcontext(iter([data]))


def test_thumbnails_are_small_cached_and_trimmed(tmp_path: Path) -> None:
    data = png(tmp_path / "big.png", (2048, 1536)).read_bytes()
    cache = ThumbnailCache(tmp_path / "cache", max_bytes=10_000_000)
    first = cache.make("s3://b/big.png#p1", reader(data))
    assert cache.cached("s3://b/big.png#p1") == first
    with Image.open(first) as thumb:
        assert thumb.format == "WEBP" and thumb.size == (320, 240)
    cache.max_bytes = first.stat().st_size + 10
    newer = cache.make("s3://b/other.png#p2", reader(data))
    assert newer.exists() and not first.exists()
    assert list(cache.scratch.iterdir()) == []  # scratch files removed after each thumbnail


def test_stale_scratch_files_of_a_crashed_process_are_swept(tmp_path: Path) -> None:
    cache = ThumbnailCache(tmp_path / "cache", max_bytes=10_000_000)
    stale, fresh = cache.scratch / "old.part", cache.scratch / "new.part"
    stale.write_bytes(b"x" * 1000)
    fresh.write_bytes(b"y")
    os.utime(stale, (1, 1))
    assert cache.size() == 1001  # scratch files count in the cache's size
    ThumbnailCache(tmp_path / "cache", max_bytes=10_000_000)
    assert not stale.exists() and fresh.exists()


def test_thumbnails_made_at_once_by_many_requests_all_succeed(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = png(tmp_path / "src.png", (400, 300)).read_bytes()
    cache = ThumbnailCache(tmp_path / "cache", max_bytes=256 * 1024 * 1024)
    with ThreadPoolExecutor(16) as pool:
        made = list(pool.map(lambda n: cache.make(f"src-{n}", reader(data)), range(64)))
    assert len(set(made)) == 64 and all(path.exists() for path in made)
    assert cache.size() == sum(path.stat().st_size for path in made)


def test_bombs_and_other_containers_are_refused_before_decoding(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(13000, 13000))
    with pytest.raises(NotAnImage, match="over the gallery's limit"):
        make_thumbnail(bomb, tmp_path / "t.webp")
    icon = tmp_path / "x.ico"
    Image.new("RGB", (64, 64)).save(icon, "ICO")
    tiff = tmp_path / "x.tiff"
    Image.new("RGB", (64, 64)).save(tiff, "TIFF")
    (tmp_path / "n.png").write_text("not an image")
    for path in (icon, tiff, tmp_path / "n.png"):
        with pytest.raises(NotAnImage, match="not an image"):
            make_thumbnail(path, tmp_path / "t.webp")


def test_the_pool_answers_busy_at_once_when_full() -> None:
    release = threading.Event()
    pool = ThumbnailPool(workers=1, max_pending=2)

    def blocked() -> Path:
        release.wait(10)
        return Path("done")

    async def scenario() -> None:
        first = asyncio.ensure_future(pool.run(blocked, timeout=10))
        second = asyncio.ensure_future(pool.run(blocked, timeout=10))
        await asyncio.sleep(0)
        with pytest.raises(Busy):
            await pool.run(blocked, timeout=10)
        release.set()
        assert await first == Path("done") and await second == Path("done")
        assert await pool.run(lambda: Path("again"), timeout=10) == Path("again")

    asyncio.run(scenario())


def test_the_pool_answers_busy_when_the_work_is_too_slow() -> None:
    release = threading.Event()
    pool = ThumbnailPool(workers=1, max_pending=4)

    async def scenario() -> None:
        with pytest.raises(Busy):
            await pool.run(lambda: Path(str(release.wait(10))), timeout=0.05)
        release.set()

    asyncio.run(scenario())


# -- manifests -----------------------------------------------------------------------------------


def manifest(root: Path, lines: list[bytes]) -> object:
    (root / "d" / "m.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return roots_for(root).locate(f"{root}/d/m.jsonl", "d")


def test_a_manifest_is_read_a_page_at_a_time(root: Path) -> None:
    lines = [json.dumps({"input": f"s3://in/{n}.png", "status": "completed"}).encode() for n in range(100)]
    page = read_page(manifest(root, lines), ReadBounds(), start=48, count=24)  # type: ignore[arg-type]
    assert page.total == 100 and not page.truncated
    assert [n for n, _ in page.lines] == list(range(48, 72))
    assert all(isinstance(line, ManifestLine) and line.input == f"s3://in/{n}.png" for n, line in page.lines)


def test_bad_manifest_lines_are_unreadable_not_fatal(root: Path) -> None:
    lines = [
        b"not json",
        b"[1, 2]",
        json.dumps({"status": ["x"]}).encode(),
        b"x" * (MAX_LINE_BYTES + 10),
        b"{}",
    ]
    page = read_page(manifest(root, lines), ReadBounds(), start=0, count=24)  # type: ignore[arg-type]
    assert page.total == 5
    assert [line is None for _, line in page.lines] == [True, True, True, True, False]


def test_a_huge_manifest_is_read_up_to_the_cap_only(root: Path) -> None:
    lines = [json.dumps({"input": "x" * 100, "status": "completed"}).encode()] * 20_000
    page = read_page(manifest(root, lines), ReadBounds(max_bytes=100_000), start=0, count=24)  # type: ignore[arg-type]
    assert page.truncated and len(page.lines) == 24
    assert page.total == 100_000 // (len(lines[0]) + 1)  # whole lines within the cap


# -- pages ---------------------------------------------------------------------------------------

HOSTILE = '"><script>alert("x")</script><img src=x onerror=alert(1)>'


def test_pages_escape_every_value_and_link_back_into_airflow() -> None:
    ti = pages.TaskInstanceRef(HOSTILE, "r1", "t", -1, "/airflow")
    record = ImageResult.parse(
        {"prediction_id": HOSTILE, "input": HOSTILE, "outputs": [HOSTILE], "target_resolution": "<b>x</b>"}
    )
    assert record is not None
    card = pages.ImageCard(
        ti, record, pages.picture(HOSTILE, False, "thumb"), pages.picture(None, False, "thumb"), None, HOSTILE
    )
    batch = pages.BatchCard(
        pages.TaskInstanceRef("d", "r1", "t", -1, "/airflow"),
        BatchProgress(images=3, jobs=3, done=2, cost_cents=6, state=FINISHED, target_resolution="<i>"),
    )
    html = pages.gallery_page(
        [card, batch],
        Totals(2, {HOSTILE: 2.0, "d": 6.0}, {"2026-11-24": 8.0}),
        Filters(dag_id=HOSTILE),
        [HOSTILE, "d"],
        page_number=1,
        per_page=24,
        skipped=1,
    )
    assert "<script" not in html and "<img src=x" not in html and "<b>x" not in html and "<i>" not in html
    assert "&lt;script&gt;" in html
    assert 'target="_top" href="/airflow/dags/d/runs/r1/tasks/t"' in html
    assert "/airflow/dags/%22%3E%3Cscript%3E" in html  # a hostile id is one quoted path segment
    assert 'data-testid="total-cost">8¢' in html and 'data-done="2"' in html
    assert "style=" not in html and "<style" not in html and "<script" not in html  # CSP: none needed
    assert "http" not in html.split("<body>")[0]  # no external asset in the head


def test_the_batch_page_shows_unreadable_lines_as_such() -> None:
    ti = pages.TaskInstanceRef("d", "r", "t", -1)
    line = ManifestLine.parse({"input": HOSTILE, "status": HOSTILE, "error": HOSTILE})
    html = pages.batch_page(
        ti,
        BatchProgress(images=2, jobs=2, done=1),
        [
            pages.LineView(0, None, pages.Picture(None), pages.Picture(None)),
            pages.LineView(1, line, pages.picture(HOSTILE, False, "x"), pages.picture(None, False, "y")),
        ],
        page_number=1,
        has_next=False,
        truncated=True,
        manifest_error=HOSTILE,
    )
    assert (
        "unreadable manifest line" in html
        and "<script" not in html
        and "larger than the gallery reads" in html
    )
    assert '<meta http-equiv="refresh" content="5">' in html


def test_media_types() -> None:
    assert media_type("x.PNG") == "image/png" and media_type("manifest.jsonl") == "application/x-ndjson"
    assert (
        media_type("y") == "application/octet-stream"
        and media_type("page.html") == "application/octet-stream"
    )


def test_the_thumbnail_cache_is_in_airflow_home_not_where_the_api_server_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_vibedream.plugins.app import Settings

    monkeypatch.chdir(tmp_path)  # an api-server started from some other directory
    monkeypatch.delenv("AIRFLOW__VIBEDREAM__GALLERY_CACHE_DIR", raising=False)
    cache = Settings().cache
    assert cache.directory == Path(os.environ["AIRFLOW_HOME"]) / "vibedream-thumbnails"
    assert cache.directory.is_dir() and not (tmp_path / "vibedream-thumbnails").exists()
    # The setting, when given, wins.
    monkeypatch.setenv("AIRFLOW__VIBEDREAM__GALLERY_CACHE_DIR", str(tmp_path / "cache"))
    assert Settings().cache.directory == tmp_path / "cache"


def test_a_batch_card_counts_reused_resized_and_skipped_images_apart() -> None:
    from airflow_vibedream.plugins.pages import environment

    progress = BatchProgress(
        images=10, jobs=4, unsubmitted=6, reused=3, resized=1, skipped=1, cost_cents=8
    ).finished(
        completed_images=8,
        manifest="s3://b/m.jsonl",
        by_status={"completed": 4, "reused": 3, "resized_locally": 1, "skipped": 1, "<b>x</b>": 1},
    )
    block = (
        environment()
        .from_string('{% from "macros.html" import progress_block %}{{ progress_block(p) }}')
        .render(p=progress)
    )
    text = " ".join(block.split())
    assert "3 reused" in text and "1 resized locally" in text and "1 skipped" in text
    assert "1 not waited for" in text  # the one left: no job, not reused, resized or skipped
    assert "resized_locally: 1" in text and "&lt;b&gt;x&lt;/b&gt;: 1" in text  # statuses are data
