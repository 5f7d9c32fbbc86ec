"""Only verified images count, against the emulator over real HTTP: an output cut short is
downloaded again; one complete but wrong (size, format, aspect ratio) is never stored and fails its
task (or its batch line) without retry; an input the API would not accept is refused before any job;
a clean run's ``files`` say which checks passed."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, TaskDeferred
from PIL import Image

from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator
from tests.conftest import emulator_stats
from tests.helpers import FakeTI
from tests.integration.emulated import faults, fire, jobs
from tests.integration.emulated import upscale as emulated_upscale

ALL_CHECKS = ["complete", "decodes", "format", "long_edge", "aspect"]


def stored_images(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix in (".png", ".jpg", ".webp")]


def upscale(emulator: EmulatorServer, tmp_path: Path, **kwargs: Any) -> VibeDreamUpscaleImageOperator:
    return emulated_upscale(emulator, tmp_path, **{"retries": 2, **kwargs})


def run_single(operator: VibeDreamUpscaleImageOperator, deferrable: bool) -> dict[str, Any]:
    """``execute`` and, when deferrable, the trigger's event and ``execute_complete``."""
    ti = FakeTI()
    if not deferrable:
        return operator.execute({"ti": ti})

    with pytest.raises(TaskDeferred) as info:
        operator.execute({"ti": ti})
    event = asyncio.run(fire(info.value.trigger))
    return operator.execute_complete({"ti": ti}, event)


@pytest.mark.parametrize("deferrable", [False, True])
def test_a_clean_run_says_every_check_passed(
    vibedream_conn: EmulatorServer, tmp_path: Path, deferrable: bool
) -> None:
    result = run_single(upscale(vibedream_conn, tmp_path, deferrable=deferrable), deferrable)
    [stored] = result["files"]
    assert stored["checks"] == ALL_CHECKS
    assert (stored["width"], stored["height"], stored["format"]) == (2048, 1536, "PNG")


@pytest.mark.parametrize("deferrable", [False, True])
def test_an_output_cut_short_once_is_downloaded_again_whole(
    vibedream_conn: EmulatorServer, tmp_path: Path, deferrable: bool
) -> None:
    faults(vibedream_conn, {"route": "output", "kind": "truncated", "times": 1})
    result = run_single(upscale(vibedream_conn, tmp_path, deferrable=deferrable), deferrable)
    [path] = stored_images(tmp_path)
    with Image.open(path) as image:
        image.load()  # decodes to the end: complete
        assert image.size == (2048, 1536)
    assert result["files"][0]["checks"] == ALL_CHECKS and jobs(vibedream_conn) == 1
    assert emulator_stats(vibedream_conn.base_url)["output_requests"] == 2  # cut, then whole


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("wrong_size", "long edge 64 px, asked 2048 px"),
        ("wrong_format", "format JPEG, asked PNG"),
        ("wrong_aspect", "does not keep the input's aspect ratio"),
    ],
)
@pytest.mark.parametrize("deferrable", [False, True])
def test_a_complete_but_wrong_output_is_never_stored_and_fails_without_retry(
    vibedream_conn: EmulatorServer, tmp_path: Path, kind: str, said: str, deferrable: bool
) -> None:
    faults(vibedream_conn, {"route": "output", "kind": kind})
    with pytest.raises(AirflowFailException, match=said):  # AirflowFailException: no retry
        run_single(upscale(vibedream_conn, tmp_path, deferrable=deferrable), deferrable)
    assert stored_images(tmp_path) == [] and not list(tmp_path.rglob("*.partial"))
    assert jobs(vibedream_conn) == 1
    assert emulator_stats(vibedream_conn.base_url)["output_requests"] == 1  # not downloaded again


@pytest.fixture
def serve_bytes() -> Iterator[Callable[[bytes], str]]:
    """A tiny HTTP server of the test on 127.0.0.1: ``serve_bytes(data)`` is a URL answering ``data``."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies[int(self.path.strip("/").split(".")[0])]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(data: bytes) -> str:
        bodies.append(data)
        return f"http://127.0.0.1:{server.server_address[1]}/{len(bodies) - 1}.img"

    try:
        yield serve
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("image", ["tiff", "text"])
def test_an_input_that_is_not_an_accepted_image_is_refused_before_any_job(
    vibedream_conn: EmulatorServer, tmp_path: Path, image: str, serve_bytes: Any
) -> None:
    tiff = io.BytesIO()
    Image.new("RGB", (64, 48)).save(tiff, "TIFF")
    url = serve_bytes(tiff.getvalue() if image == "tiff" else b"hello, not an image")
    expected = "a TIFF image" if image == "tiff" else "not a JPEG, PNG, GIF or WebP image"
    with pytest.raises(AirflowFailException, match=expected):
        upscale(vibedream_conn, tmp_path, image=url).execute({"ti": FakeTI()})
    assert jobs(vibedream_conn) == 0


def test_the_batch_verifies_every_line(
    vibedream_conn: EmulatorServer, tmp_path: Path, serve_bytes: Any
) -> None:
    tiff = io.BytesIO()
    Image.new("RGB", (64, 48)).save(tiff, "TIFF")
    images = [
        f"{vibedream_conn.base_url}/samples/64x48.png",
        f"{vibedream_conn.base_url}/samples/48x64.png",
        f"{vibedream_conn.base_url}/samples/50x50.png",
        serve_bytes(tiff.getvalue()),
    ]
    # Downloads in order of the lines are not guaranteed: every 2nd output is cut once (downloaded
    # again, whole), and one output is of the wrong size.
    faults(
        vibedream_conn,
        {"route": "output", "kind": "truncated", "every": 2, "times": 1},
        {"route": "output", "kind": "wrong_size", "every": 3, "times": 1},
    )
    operator = VibeDreamBatchUpscaleOperator(
        task_id="batch",
        images=images,
        target_resolution="2k",
        output_format="png",
        output_path=str(tmp_path),
        max_concurrency=1,
        poll_interval=0.1,
        deferrable=False,
        fail_on_error=False,
    )
    summary = operator.execute({"ti": FakeTI()})
    [manifest] = tmp_path.rglob("manifest.jsonl")
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    statuses = [line["status"] for line in lines]
    assert statuses[3] == "skipped" and "a TIFF image" in lines[3]["error"]
    assert sorted(statuses[:3]) == ["completed", "completed", "invalid_output"]
    invalid = next(line for line in lines if line["status"] == "invalid_output")
    assert "long edge 64 px, asked 2048 px" in invalid["error"] and invalid["outputs"] is None
    assert all(line["checks"] == ALL_CHECKS for line in lines if line["status"] == "completed")
    assert len(stored_images(tmp_path)) == 2 and jobs(vibedream_conn) == 3
    assert summary["completed"] == 2 and summary["failed"] == 2
