"""Every message of docs/troubleshooting.md, triggered for real and matched against the table.

The table's first column names each message (code spans, or quoted text for the gallery's notes;
``…`` stands for any text, ``<…>`` for a value, a number for any number). For each row, a trigger
below makes the message happen the way a user meets it, against the emulator over real HTTP, a
real operator, a real local file server or the real gallery app, and the test asserts that the
message produced matches what the docs say. A row without a trigger, or a trigger without a row,
fails: the page and the code cannot drift apart."""

from __future__ import annotations

import contextlib
import functools
import html
import json
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from airflow_vibedream.client import ClientSettings, RetryPolicy, UpscaleRequest, VibeDreamClient
from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.files.downloads import DownloadPolicy, download_chunks
from airflow_vibedream.files.outputs import download_policy
from airflow_vibedream.files.storage import validate_name_template
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.jobs.identity import identity_of
from airflow_vibedream.jobs.ledger.documents import Ledger, TaskRef, new_entry
from airflow_vibedream.jobs.signing import RecordSigner
from airflow_vibedream.jobs.single import STATE_KEY
from airflow_vibedream.jobs.submissions import SubmissionRecord
from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator
from airflow_vibedream.waiting.blocking import wait_for_prediction
from tests.conftest import TEST_KEY, connection_json
from tests.helpers import FakeStateStore, FakeTI, recorded
from tests.integration.emulated import faults

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "troubleshooting.md"
SIGNER = RecordSigner(TEST_KEY)


# -- the page ---------------------------------------------------------------------------------------


def documented_rows() -> dict[str, list[str]]:
    """``{first cell: [message, ...]}`` of the table: its code spans, else its quoted texts, else the
    alternatives of the cell itself (``gallery: 401 / 403``)."""
    rows = {}
    for line in PAGE.read_text().splitlines():
        if not line.startswith("| ") or line.startswith(("| message", "|---")):
            continue
        first = _first_cell(line)
        spans = re.findall(r"`([^`]+)`", first)
        quoted = re.findall(r'"([^"]+)"', re.sub(r"`[^`]*`", "", first))
        alternatives = [part.strip() for part in first.removeprefix("gallery:").split("/")]
        rows[first] = spans + quoted or alternatives
    return rows


def _first_cell(line: str) -> str:
    in_code = False
    for index, char in enumerate(line[2:], start=2):
        if char == "`":
            in_code = not in_code
        elif char == "|" and not in_code:
            return line[2:index].strip()
    raise AssertionError(f"not a table row: {line}")


def pattern_of(message: str) -> re.Pattern[str]:
    """``…`` any text, ``<…>`` a value, ``N``/``M`` and every number any number; the rest literal."""
    parts = re.split(r"(\s*…\s*|<[^>]+>|\b[NM]\b|\d+)", message)
    regex = "".join(
        (".*?" if "…" in part else None)
        or (r".+?" if part.startswith("<") else r"\d+(?:\.\d+)?" if re.fullmatch(r"[NM]|\d+", part) else None)
        or re.escape(part)
        for part in parts
        if part
    )
    return re.compile(regex, re.DOTALL)


# -- what the triggers share ------------------------------------------------------------------------


@dataclass
class Kit:
    """What a trigger works with: the emulator behind ``vibedream_default``, a scratch directory and
    what the task and trigger logs said.

    :param emulator: the emulator ``vibedream_default`` points at.
    :param tmp_path: the test's scratch directory.
    :param monkeypatch: to change the environment (a connection) for this test only.
    :param capsys: the task log (Airflow's task loggers print).
    :param caplog: the other loggers.
    """

    emulator: EmulatorServer
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]
    caplog: pytest.LogCaptureFixture

    def said(self) -> str:
        return self.capsys.readouterr().out + self.caplog.text

    def client(self, **kwargs: Any) -> VibeDreamClient:
        return VibeDreamClient(
            ClientSettings(api_key=TEST_KEY, base_url=self.emulator.base_url, **kwargs)  # type: ignore[arg-type]
        )

    def image(self, size: str = "64x48") -> str:
        return f"{self.emulator.base_url}/samples/{size}.png"


def error_of(action: Callable[[], Any]) -> str:
    """The message of the error ``action`` raises (the test fails if it raises none)."""
    try:
        action()
    except Exception as exc:
        return str(exc)
    raise AssertionError("no error was raised")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def file_server(directory: Path) -> Iterator[str]:
    """A folder served over http on a free loopback port (what the docs tell users to do)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run(task: Any, ti: FakeTI | None = None, store: FakeStateStore | None = None) -> Any:
    context: dict[str, Any] = {"ti": ti or FakeTI()}
    if store is not None:
        context["task_state_store"] = store
    return task.execute(context)


def single(kit: Kit, **kwargs: Any) -> VibeDreamUpscaleImageOperator:
    values: dict[str, Any] = {
        "task_id": "upscale",
        "image": kit.image(),
        "target_resolution": "2k",
        "output_format": "png",
        "poll_interval": 0.1,
        "deferrable": False,
        **kwargs,
    }
    return VibeDreamUpscaleImageOperator(**values)


def batch(kit: Kit, count: int = 2, **kwargs: Any) -> VibeDreamBatchUpscaleOperator:
    values: dict[str, Any] = {
        "task_id": "batch",
        "images": [kit.image(f"{100 + i}x80") for i in range(count)],
        "target_resolution": "2k",
        "output_format": "jpeg",
        "output_path": str(kit.tmp_path / "out"),
        "poll_interval": 0.1,
        "deferrable": False,
        **kwargs,
    }
    return VibeDreamBatchUpscaleOperator(**values)


def record_for(task: VibeDreamUpscaleImageOperator, prediction_id: str) -> dict[str, Any]:
    """What an earlier try of ``task`` recorded in its task_state_store for ``prediction_id``."""
    spec = task.job_spec()
    return recorded(SIGNER, SubmissionRecord(spec.fingerprint, dict(spec.asked), prediction_id, 2).to_json())


# -- the triggers, one per row ----------------------------------------------------------------------


def no_api_key(kit: Kit) -> list[str]:
    kit.monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(kit.emulator.base_url, None))
    return [error_of(lambda: VibeDreamHook().get_client())]


def wrong_key(kit: Kit) -> list[str]:
    client = VibeDreamClient(ClientSettings(api_key="revoked", base_url=kit.emulator.base_url))
    return [error_of(lambda: client.get_prediction(str(uuid.uuid4())))]


def api_not_running(kit: Kit) -> list[str]:
    # The connection points at a port where nothing listens (the emulator runs elsewhere).
    url = f"http://127.0.0.1:{closed_port()}"
    kit.monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(url, max_retries=0))
    return [error_of(lambda: VibeDreamHook().get_client().get_prediction(str(uuid.uuid4())))]


def bad_input(kit: Kit) -> list[str]:
    return [
        error_of(lambda: single(kit, target_resolution="3k")),
        error_of(lambda: single(kit, output_format="bmp")),
        error_of(lambda: single(kit, image="ftp://example.com/a.png").job_spec()),
    ]


def local_path(kit: Kit) -> list[str]:
    return [
        error_of(lambda: single(kit, image="/data/photo.png").job_spec()),
        error_of(lambda: batch(kit, images=["/data/photo.png"]).image_list()),
    ]


def plain_http(kit: Kit) -> list[str]:
    return [error_of(lambda: ClientSettings(api_key="k", base_url="http://api.example.com"))]


def submit_answer_lost(kit: Kit) -> list[str]:
    faults(kit.emulator, {"route": "submit", "kind": "drop"})
    return [error_of(lambda: kit.client().upscale(UpscaleRequest(kit.image(), "2k", "png")))]


def batch_answers_lost(kit: Kit) -> list[str]:
    faults(kit.emulator, {"route": "submit", "kind": "drop"})
    return [error_of(lambda: run(batch(kit)))]


def input_changed(kit: Kit) -> list[str]:
    earlier = single(kit, image=kit.image("64x48"))
    prediction = kit.client().upscale(UpscaleRequest(earlier.image, "2k", "png"))
    # The same task, cleared with another image: the recorded job was made for the first one.
    store = FakeStateStore({STATE_KEY: record_for(earlier, prediction.id)})
    run(single(kit, image=kit.image("80x60")), store=store)
    return [kit.said()]


def outputs_expired(kit: Kit) -> list[str]:
    task = single(kit)
    prediction = wait_for_prediction(
        kit.client(), kit.client().upscale(UpscaleRequest(task.image, "2k", "png")).id, poll_interval=0.1
    )
    assert prediction.succeeded
    faults(kit.emulator, {"route": "output", "kind": "status", "status": 410, "times": 1})
    run(single(kit), store=FakeStateStore({STATE_KEY: record_for(task, prediction.id)}))
    return [kit.said()]


def deadline_passed(kit: Kit) -> list[str]:
    faults(kit.emulator, {"route": "any", "kind": "stuck"})
    return [error_of(lambda: run(single(kit, timeout=1)))]


def input_unreachable(kit: Kit) -> list[str]:
    image = f"http://127.0.0.1:{closed_port()}/photo.png"
    client = kit.client()
    prediction = client.upscale(UpscaleRequest(image, "2k", "png"))
    from airflow_vibedream.errors import VibeDreamPredictionFailedError

    waited = wait_for_prediction(client, prediction.id, poll_interval=0.1)
    return [str(VibeDreamPredictionFailedError.of(waited.id, waited.error))]


def rate_limited(kit: Kit) -> list[str]:
    faults(kit.emulator, {"route": "poll", "kind": "status", "status": 429})
    client = kit.client(retry=RetryPolicy(max_retries=1, initial_backoff=0.01, max_backoff=0.01))
    return [error_of(lambda: client.get_prediction(str(uuid.uuid4())))]


def reconnected(kit: Kit) -> list[str]:
    task = single(kit)
    prediction = kit.client().upscale(UpscaleRequest(task.image, "2k", "png"))
    run(single(kit), store=FakeStateStore({STATE_KEY: record_for(task, prediction.id)}))
    return [kit.said()]


def over_budget(kit: Kit) -> list[str]:
    return [error_of(lambda: run(batch(kit, count=3, max_cost_cents=5)))]


def batch_progress(kit: Kit) -> list[str]:
    run(batch(kit, count=2, progress_interval=0.1))
    return [kit.said()]


def no_state_store(kit: Kit) -> list[str]:
    run(single(kit))  # no task_state_store in the context, as below Airflow 3.3; no output_path
    return [kit.said()]


def intent_without_id(kit: Kit) -> list[str]:
    output = kit.tmp_path / "out"
    task = single(kit, output_path=str(output))
    policy = download_policy(VibeDreamHook().get_client().settings)
    spec = task.job_spec()
    # What a task killed while its submit was in flight leaves in the ledger (long ago: not a
    # submit in progress right now).
    intent = new_entry(
        spec.model_id,
        spec.asked,
        identity_of(task.image, aws_conn_id=None, policy=policy),
        TaskRef.of(FakeTI()),
    )
    Ledger(str(output), None, SIGNER).claim(
        intent.model_copy(update={"updated_at": "2026-01-01T00:00:00+00:00"})
    )
    return [error_of(lambda: run(single(kit, output_path=str(output))))]


def reused(kit: Kit) -> list[str]:
    output = str(kit.tmp_path / "out")
    run(single(kit, output_path=output))
    ti = FakeTI()
    ti.run_id = "manual__2"
    run(single(kit, output_path=output), ti=ti)
    return [kit.said()]


def no_ledger(kit: Kit) -> list[str]:
    run(single(kit))
    return [kit.said()]


def answer_too_large(kit: Kit) -> list[str]:
    prediction = kit.client().upscale(UpscaleRequest(kit.image(), "2k", "png"))
    client = kit.client(max_response_bytes=100, retry=RetryPolicy(max_retries=0))
    return [error_of(lambda: client.get_prediction(prediction.id))]


def outage(kit: Kit) -> list[str]:
    kit.monkeypatch.setenv(
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(kit.emulator.base_url, max_retries=1)
    )
    faults(kit.emulator, {"route": "poll", "kind": "outage", "status": 503, "seconds": 2.0})
    run(single(kit, poll_interval=0.3, timeout=60))
    return [kit.said()]


def private_output(kit: Kit) -> list[str]:
    policy = DownloadPolicy(allow_private=False)
    with httpx.Client() as http:
        return [error_of(lambda: list(download_chunks(kit.image(), http, policy)))]


def output_too_large_or_slow(kit: Kit) -> list[str]:
    with httpx.Client() as http:
        too_large = error_of(
            lambda: list(download_chunks(kit.image(), http, DownloadPolicy(max_bytes=10, allow_private=True)))
        )
        faults(kit.emulator, {"route": "output", "kind": "drip", "delay": 0.2})
        client = kit.client()
        output = wait_for_prediction(
            client, client.upscale(UpscaleRequest(kit.image(), "2k", "png")).id, poll_interval=0.1
        ).outputs[0]
        slow = error_of(
            lambda: list(download_chunks(output, http, DownloadPolicy(timeout=0.5, allow_private=True)))
        )
    return [too_large, slow]


def submit_redirected(kit: Kit) -> list[str]:
    faults(
        kit.emulator,
        {"route": "submit", "kind": "answer", "status": 307, "headers": {"Location": "http://127.0.0.1:9/x"}},
    )
    return [error_of(lambda: kit.client().upscale(UpscaleRequest(kit.image(), "2k", "png")))]


def bad_name_template(kit: Kit) -> list[str]:
    return [
        error_of(lambda: validate_name_template("/{dag_id}/{prediction_id}.{ext}")),
        error_of(lambda: validate_name_template("{dag_id}/{nope}.{ext}")),
    ]


def key_rotated(kit: Kit) -> list[str]:
    hook = VibeDreamHook()
    hook.get_conn()
    kit.monkeypatch.setenv(
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(kit.emulator.base_url, api_key="rotated-key")
    )
    assert hook.reread_client() is not None
    return [kit.said()]


def airflows_own_race(kit: Kit) -> list[str]:
    # Airflow's own scheduler says this (apache/airflow#71580, #72716), in a race no test can force:
    # its template is read from the installed Airflow and filled in as the row describes (a task
    # reported "success" while the database says "queued").
    import airflow.jobs.scheduler_job_runner as scheduler

    source = Path(scheduler.__file__).read_text()
    [template] = re.findall(r'"(Executor %s reported that the task instance %s[^"]*)"', source)
    return [template % ("LocalExecutor", "<TaskInstance: d.t r>", "success", "queued")]


def input_refused(kit: Kit) -> list[str]:
    from PIL import Image

    folder = kit.tmp_path / "served"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "photo.tiff", "TIFF")
    with file_server(folder) as base:
        tiff = error_of(lambda: run(single(kit, image=f"{base}/photo.tiff")))
        unreadable = error_of(lambda: run(single(kit, image=f"{base}/missing.png")))
    return [tiff, unreadable]


def empty_input(kit: Kit) -> list[str]:
    folder = kit.tmp_path / "served"
    folder.mkdir()
    (folder / "photo.png").write_bytes(b"")
    with file_server(folder) as base:
        return [error_of(lambda: run(single(kit, image=f"{base}/photo.png")))]


def output_not_as_asked(kit: Kit) -> list[str]:
    faults(kit.emulator, {"route": "output", "kind": "wrong_size"})
    return [error_of(lambda: run(single(kit, output_path=str(kit.tmp_path / "out"))))]


def output_cut_short(kit: Kit) -> list[str]:
    faults(kit.emulator, {"route": "output", "kind": "truncated"})
    return [error_of(lambda: run(single(kit, output_path=str(kit.tmp_path / "out"))))]


# -- the gallery: the real app, with what needs a running Airflow stood in (as in
# tests/unit/test_gallery_dag_folders.py) -----------------------------------------------------------

DAG = "my_dag"
RUN = "manual__1"


def gallery(kit: Kit, roots: object, result: dict[str, Any], readable: set[str]) -> TestClient:
    from airflow_vibedream.plugins import access, queries
    from airflow_vibedream.plugins import app as gallery_app
    from airflow_vibedream.plugins.manifests import ManifestPages
    from airflow_vibedream.plugins.roots import GalleryRoots
    from airflow_vibedream.plugins.sources import ReadBounds
    from airflow_vibedream.plugins.thumbnails import ThumbnailCache, ThumbnailPool
    from airflow_vibedream.tasks.records import RESULT_XCOM_KEY, ImageResult

    settings = gallery_app.Settings()
    settings.__dict__.update(
        roots=GalleryRoots.parse(json.dumps(roots)),
        redirect_hosts=frozenset(),
        image_bounds=ReadBounds(),
        manifests=ManifestPages(ReadBounds(), gallery_app.PER_PAGE),
        cache=ThumbnailCache(kit.tmp_path / "thumbnails", 1024 * 1024),
        pool=ThumbnailPool(),
        ui_root="",
    )
    kit.monkeypatch.setattr(gallery_app, "settings", settings)
    kit.monkeypatch.setattr(access, "readable_dag_ids", lambda user: readable)
    kit.monkeypatch.setattr(gallery_app, "readable_dag_ids", lambda user: readable)
    record = ImageResult(prediction_id="p", input=result["input"], outputs=result["outputs"])
    row = queries.ResultRow("image", DAG, RUN, "upscale", -1, _now(), record)
    kit.monkeypatch.setattr(queries, "one", lambda *key: record if key[-1] == RESULT_XCOM_KEY else None)
    kit.monkeypatch.setattr(queries, "results_page", lambda readable, filters, page, per_page: ([row], 0))
    kit.monkeypatch.setattr(queries, "totals", lambda readable, filters: queries.Totals(1, {}, {}))
    kit.monkeypatch.setattr(queries, "dags_with_results", lambda readable: sorted(readable))
    app = gallery_app.create_app()

    def user(request: Request) -> str:
        if "authorization" not in request.headers:  # as Airflow's get_user answers without a token
            from fastapi import HTTPException

            raise HTTPException(401, "Not authenticated")
        return "alice"

    from airflow_vibedream.plugins.access import user_dependency

    app.dependency_overrides[user_dependency()] = user
    return TestClient(app, headers={"authorization": "Bearer x"})


def _now() -> Any:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def gallery_refusals(kit: Kit) -> list[str]:
    image = kit.tmp_path / "elsewhere" / "a.png"
    with gallery(
        kit, {str(kit.tmp_path / "outputs"): None}, {"input": str(image), "outputs": [str(image)]}, {DAG}
    ) as client:
        page = client.get("/gallery").text
        thumb = client.get(
            "/thumb", params={"dag_id": DAG, "run_id": RUN, "task_id": "upscale", "which": "output"}
        )
    return [page, f"/vibedream{thumb.request.url.path} answers {thumb.status_code} {thumb.json()['detail']}"]


def gallery_dag_folder(kit: Kit) -> list[str]:
    root = kit.tmp_path / "home"
    image = f"{root}/outputs/{DAG}/{RUN}/upscale/p-0.png"  # the root is the folder above output_path
    roots = {str(root): {"conn_id": None, "name": "outputs"}}
    with gallery(kit, roots, {"input": image, "outputs": [image]}, {DAG}) as client:
        return [html.unescape(client.get("/gallery").text)]  # the page as a reader sees it


def gallery_external(kit: Kit) -> list[str]:
    url = "https://assets.vibedream.ai/outputs/p-0.png"
    with gallery(kit, {}, {"input": url, "outputs": [url]}, {DAG}) as client:
        return [client.get("/gallery").text]


def gallery_access(kit: Kit) -> list[str]:
    url = "https://assets.vibedream.ai/outputs/p-0.png"
    with gallery(kit, {}, {"input": url, "outputs": [url]}, {"another_dag"}) as client:
        params = {"dag_id": DAG, "run_id": RUN, "task_id": "upscale"}
        no_token = client.get("/output", params=params, headers={"authorization": ""})
        other = client.get("/output", params=params)
    return [f"{no_token.status_code} {no_token.text}", f"{other.status_code} {other.text}"]


def gallery_roots_broken(kit: Kit) -> list[str]:
    from airflow_vibedream.plugins.roots import GalleryRoots

    kit.monkeypatch.setenv("AIRFLOW__VIBEDREAM__GALLERY_ROOTS", "{not json")
    assert GalleryRoots.from_config() == GalleryRoots()
    return [kit.said()]


TRIGGERS: dict[str, Callable[[Kit], list[str]]] = {
    "No VibeDream API key": no_api_key,
    "failed: HTTP 401": wrong_key,
    "no answer from": api_not_running,
    "target_resolution must be one of": bad_input,
    "is a local path": local_path,
    "is plain http on a non-loopback host": plain_http,
    "… submission state unknown (…)": submit_answer_lost,
    "Submission state unknown (sent, answer lost": batch_answers_lost,
    "input changed since prediction": input_changed,
    "can no longer be fetched": outputs_expired,
    "did not finish before the deadline": deadline_passed,
    "Failed to fetch the input image": input_unreachable,
    "failed: HTTP 429": rate_limited,
    "Reconnected to VibeDream prediction": reconnected,
    "max_cost_cents: the batch would cost about": over_budget,
    "VibeDream batch: 40/100 done": batch_progress,
    "task_state_store is not available": no_state_store,
    "recorded its intent to submit at": intent_without_id,
    "was already upscaled from the same bytes": reused,
    "VibeDream ledger not used": no_ledger,
    "exceeds max_response_bytes": answer_too_large,
    "VibeDream API unavailable for": outage,
    "resolves to the non-public address": private_output,
    "stopped: more than max_output_bytes": output_too_large_or_slow,
    "a submit is never re-sent to another address": submit_redirected,
    "output_name_template must be a relative name": bad_name_template,
    "has new settings since": key_rotated,
    "reported that the task instance": airflows_own_race,
    "is a TIFF image": input_refused,
    "is empty (0 bytes)": empty_input,
    "is not what was asked": output_not_as_asked,
    "is cut short or does not decode": output_cut_short,
    "401 / 403": gallery_access,
    '"not under a gallery root"': gallery_refusals,
    "(a gallery root shows each DAG only its own folder)": gallery_dag_folder,
    '"external image (not fetched)"': gallery_external,
    "gallery_roots is not JSON": gallery_roots_broken,
}


def trigger_for(row: str) -> Callable[[Kit], list[str]]:
    [trigger] = [trigger for key, trigger in TRIGGERS.items() if key in row]
    return trigger


def test_every_row_has_one_trigger_and_every_trigger_a_row() -> None:
    rows = documented_rows()
    assert len(rows) >= 35
    for row in rows:
        matching = [key for key in TRIGGERS if key in row]
        assert len(matching) == 1, f"row {row!r}: triggers {matching} (give it exactly one)"
    unused = [key for key in TRIGGERS if not any(key in row for row in rows)]
    assert not unused, f"triggers of no row: {unused}"


@pytest.mark.parametrize("row", list(documented_rows()), ids=lambda row: re.sub(r"\W+", "_", row)[:60])
def test_the_message_happens_as_documented(
    row: str,
    vibedream_conn: EmulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    kit = Kit(vibedream_conn, tmp_path, monkeypatch, capsys, caplog)
    produced = trigger_for(row)(kit)
    for message in documented_rows()[row]:
        pattern = pattern_of(message)
        assert any(pattern.search(text) for text in produced), (
            f"documented: {message!r}\nproduced:\n" + "\n---\n".join(text[-3000:] for text in produced)
        )


def test_the_patterns_are_strict() -> None:
    # A pattern keeps every word: only "…", "<…>", N/M and numbers stand for something else.
    pattern = pattern_of("… failed: HTTP 401: … (check the API key …)")
    assert pattern.search("VibeDream poll failed: HTTP 403: no (check the API key in the password)")
    assert not pattern.search("VibeDream poll failed: HTTP 401: no (check the key)")
    assert not pattern_of("is empty (0 bytes)").search("is empty")
