"""Hostile records against the real api-server: the gallery must treat XCom as data, never as
instructions.

A real Airflow (api-server, scheduler, dag-processor, triggerer) with the simple auth manager and two
real users: ``admin``, and ``mallory`` with the plain "user" role, who may write XCom through
Airflow's public REST API and nothing more. A legitimate run leaves real results (a single upscale and
a batch, stored under the deployment's gallery root). Mallory then writes ``vibedream_result`` and
``vibedream_batch_progress`` records of her own through the REST API: files of the api-server through
every scheme and case variant, ``..`` and symlink escapes, markup in every field, URLs of an internal
HTTP server that counts what reaches it, foreign redirects, a FIFO, a decompression bomb, an icon that
hides one, a 30 MB manifest, type-confused records. Every route of the plugin is then asked for each,
as the admin (the victim who opens the gallery) and as mallory. Each test asserts that nothing was
served, reached, echoed or crashed, and that the legitimate results beside the hostile ones still
show."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psutil
import pytest
from PIL import Image

from airflow_vibedream.emulator.process import EmulatorProcess
from tests.conftest import MotoS3, connection_json
from tests.e2e.cluster import AirflowCluster, free_port
from tests.e2e.services import deferral_safe_emulator

pytestmark = pytest.mark.e2e

LEGIT_DAG = "vibedream_links"
HOSTILE_DAG = "vibedream_hostile"
DAG_FILES = Path(__file__).resolve().parent.parent / "dags" / "gallery"
BUCKET = "hostile-out"
PRIVATE_BUCKET = "private"
S3_SECRET = b"s3-secret-" + secrets.token_hex(8).encode()
FILE_SECRET = "file-secret-" + secrets.token_hex(8)
MARKUP = '"><script>alert(document.cookie)</script><img src=x onerror=alert(1)><a href="javascript:x">'
ROUTES = (
    "thumb-input",
    "thumb-output",
    "output",
    "batch",
    "manifest",
    "progress",
    "line-input",
    "line-output",
)


class CountingServer:
    """An internal HTTP server on this test host: it answers every request with an image and counts
    them; the api-server must never reach it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        body = io.BytesIO()
        Image.new("RGB", (8, 8)).save(body, "PNG")
        hits, payload = self.hits, body.getvalue()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CountingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (seed * 37 % 256, 90, 160)).save(out, "PNG")
    return out.getvalue()


def bomb_png(width: int = 13000, height: int = 13000) -> bytes:
    """The header of a 13000x13000 PNG in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))


def icon_holding(png: bytes) -> bytes:
    """An ICO file whose one entry is ``png`` (an ICO decoder decodes the PNG inside)."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def root(module_tmp: Path) -> Path:
    """The deployment's gallery root, with what a hostile record may point at inside it."""
    directory = module_tmp / "outputs"
    # The hostile DAG's own folder of the root (roots are per DAG): its records may point here.
    own = directory / HOSTILE_DAG
    own.mkdir(parents=True)
    (module_tmp / "secret.txt").write_text(FILE_SECRET)
    (own / "passwd.png").symlink_to("/etc/passwd")
    (own / "secret.png").symlink_to(module_tmp / "secret.txt")
    (own / "everything").symlink_to("/")
    os.mkfifo(own / "fifo.png")
    (own / "bomb.png").write_bytes(bomb_png())
    (own / "bomb.ico").write_bytes(icon_holding(bomb_png()))
    (own / "page.html").write_text("<script>alert(1)</script>")
    (own / "big.png").write_bytes(b"\x89PNG" + b"\n" * (20 * 1024 * 1024))
    many = own / "many"
    many.mkdir()
    for seed in range(40):
        (many / f"{seed}.png").write_bytes(png_bytes(1600, 1200, seed))
    return directory


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    client = server.client()
    for bucket in (BUCKET, PRIVATE_BUCKET):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=BUCKET, Key=f"upscaled/{HOSTILE_DAG}/ok.png", Body=png_bytes(64, 48))
    client.put_object(Bucket=BUCKET, Key="upscaled/other_dag/ok.png", Body=png_bytes(64, 48))
    client.put_object(Bucket=BUCKET, Key="secret.txt", Body=S3_SECRET)
    client.put_object(Bucket=PRIVATE_BUCKET, Key="secret.txt", Body=S3_SECRET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def internal() -> Iterator[CountingServer]:
    with CountingServer() as server:
        yield server


@pytest.fixture(scope="module")
def emulator(module_tmp: Path) -> Iterator[EmulatorProcess]:
    with deferral_safe_emulator(module_tmp) as process:
        yield process


@pytest.fixture(scope="module")
def users() -> dict[str, str]:
    return {name: secrets.token_urlsafe(12) for name in ("admin", "mallory")}


@pytest.fixture(scope="module")
def cluster(
    module_tmp: Path, root: Path, s3: MotoS3, emulator: EmulatorProcess, users: dict[str, str]
) -> Iterator[AirflowCluster]:
    dags = module_tmp / "dags"
    dags.mkdir()
    for name in (LEGIT_DAG, HOSTILE_DAG):
        shutil.copy(DAG_FILES / f"{name}.py", dags)
    passwords = module_tmp / "passwords.json"
    passwords.write_text(json.dumps(users))
    airflow = AirflowCluster(
        module_tmp / "airflow",
        dags,
        env={
            "AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(emulator.base_url),
            "AIRFLOW_CONN_AWS_DEFAULT": s3.connection_json(),
            # Connections a hostile record might name: none of them may be used for it.
            "AIRFLOW_CONN_METADATA_PG": "postgresql://airflow:pg-password@127.0.0.1:5432/airflow",
            "AIRFLOW_CONN_OTHER_AWS": s3.connection_json(),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,mallory:user",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__VIBEDREAM__GALLERY_ROOTS": json.dumps(
                {str(root): None, f"s3://{BUCKET}/upscaled/": "aws_default"}
            ),
            "AIRFLOW__VIBEDREAM__GALLERY_CACHE_DIR": str(module_tmp / "thumbnails"),
            "AIRFLOW__VIBEDREAM__GALLERY_READ_TIMEOUT": "5",
        },
    )
    try:
        airflow.log_in_as("admin", users["admin"])
        airflow.start_all()
        for dag_id in (LEGIT_DAG, HOSTILE_DAG):
            airflow.wait_for_dag(dag_id)
        yield airflow
    finally:
        airflow.stop()


@pytest.fixture(scope="module")
def legit_run(cluster: AirflowCluster, emulator: EmulatorProcess, root: Path) -> str:
    samples = [f"{emulator.base_url}/samples/{size}.png" for size in ("320x240", "240x320", "200x200")]
    run = cluster.trigger(LEGIT_DAG, {"image": samples[0], "batch": samples[1:], "output": str(root)})
    assert cluster.wait_for_run(LEGIT_DAG, run) == "success"
    return run


@pytest.fixture(scope="module")
def hostile_run(cluster: AirflowCluster) -> str:
    run = cluster.trigger(HOSTILE_DAG, {})
    assert cluster.wait_for_run(HOSTILE_DAG, run) == "success"
    return run


class Mallory:
    """Writes records as the "user"-role account, through Airflow's public REST API only."""

    def __init__(self, cluster: AirflowCluster, password: str, run_id: str) -> None:
        self.cluster = cluster
        self.run_id = run_id
        self.token = cluster.token("mallory", password)
        self.used = 0

    def write(self, key: str, value: Any) -> str:
        """A new task of the hostile DAG with ``value`` under ``key``; that task's id."""
        task_id = f"r{self.used}"
        self.used += 1
        response = httpx.post(
            f"{self.cluster.base_url}/api/v2/dags/{HOSTILE_DAG}/dagRuns/{self.run_id}/taskInstances/"
            f"{task_id}/xcomEntries",
            json={"key": key, "value": value, "map_index": -1},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        assert response.status_code == 201, response.text  # the plain user role may write XCom
        return task_id


@pytest.fixture(scope="module")
def mallory(cluster: AirflowCluster, users: dict[str, str], hostile_run: str) -> Mallory:
    return Mallory(cluster, users["mallory"], hostile_run)


@pytest.fixture(scope="module")
def admin_headers(cluster: AirflowCluster, users: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.token('admin', users['admin'])}"}


def secrets_of(cluster: AirflowCluster) -> list[bytes]:
    """What must never appear in an answer: the api-server's JWT secret, its connections, files."""
    return [
        cluster.env["AIRFLOW__API_AUTH__JWT_SECRET"].encode(),
        b"pg-password",
        b"AIRFLOW_CONN",
        b"root:x:0:0",
        FILE_SECRET.encode(),
        S3_SECRET,
    ]


def route_url(
    cluster: AirflowCluster, route: str, run_id: str, task_id: str, dag_id: str = HOSTILE_DAG
) -> str:
    query = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": -1}
    path, extra = {
        "thumb-input": ("thumb", {"which": "input"}),
        "thumb-output": ("thumb", {"which": "output"}),
        "output": ("output", {}),
        "batch": ("batch", {}),
        "manifest": ("manifest", {}),
        "progress": ("api/progress", {}),
        "line-input": ("thumb", {"which": "input", "line": 0}),
        "line-output": ("thumb", {"which": "output", "line": 0}),
    }[route]
    return f"{cluster.base_url}/vibedream/{path}?{urlencode(query | extra)}"


def ask_everything(
    cluster: AirflowCluster,
    headers: dict[str, str],
    run_id: str,
    task_ids: list[str],
    *,
    bytes_refused: bool = True,
) -> list[httpx.Response]:
    """Every route of the plugin for every task, plus the gallery pages; each answer checked for
    what must never be in one: a 5xx, a secret of the api-server, a missing CSP, a redirect, and
    (``bytes_refused``) any stored bytes at all."""
    answers = [
        httpx.get(route_url(cluster, route, run_id, task_id), headers=headers, timeout=60)
        for task_id in task_ids
        for route in ROUTES
    ]
    for page in range(1, 4):
        answers.append(
            httpx.get(f"{cluster.base_url}/vibedream/gallery?page={page}", headers=headers, timeout=60)
        )
    for answer in answers:
        where = f"{answer.request.url}: {answer.status_code} {answer.text[:300]!r}"
        assert answer.status_code < 500, where
        assert not any(secret in answer.content for secret in secrets_of(cluster)), where
        assert answer.headers.get("content-security-policy", "").startswith("default-src 'none'"), where
        assert not answer.is_redirect, where
        if is_byte_route(answer) and bytes_refused:
            assert answer.status_code in (403, 404), where
        if is_byte_route(answer) and answer.status_code == 200:  # a manifest under the root
            assert answer.headers["content-type"] == "application/x-ndjson", where
            assert answer.headers["content-disposition"] == "attachment", where
    return answers


def is_byte_route(answer: httpx.Response) -> bool:
    """A route that answers with stored bytes (a thumbnail, an output, a manifest)."""
    return answer.request.url.path.rsplit("/", 1)[-1] in ("thumb", "output", "manifest")


def legit_results_still_show(cluster: AirflowCluster, headers: dict[str, str], legit_run: str) -> None:
    """The legitimate single image and batch: in the gallery, with thumbnails that load."""
    html = httpx.get(f"{cluster.base_url}/vibedream/gallery?dag_id={LEGIT_DAG}", headers=headers).text
    assert html.count('data-kind="image"') == 1 and html.count('data-kind="batch"') == 1
    for route in ("thumb-output", "line-output"):
        task = "upscale" if route == "thumb-output" else "batch"
        thumb = httpx.get(
            route_url(cluster, route, legit_run, task, dag_id=LEGIT_DAG), headers=headers, timeout=60
        )
        assert thumb.status_code == 200 and thumb.content[:4] == b"RIFF", (
            route,
            thumb.status_code,
            thumb.text,
        )
    output = httpx.get(route_url(cluster, "output", legit_run, "upscale", dag_id=LEGIT_DAG), headers=headers)
    assert output.status_code == 200 and output.content.startswith(b"\x89PNG")


def result(output: str | None = None, input_: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "prediction_id": "p-" + secrets.token_hex(4),
        "input": input_,
        "outputs": [output] if output else [],
    } | extra


def progress(manifest: str | None, **extra: Any) -> dict[str, Any]:
    return {"images": 1, "jobs": 1, "done": 1, "state": "finished", "manifest": manifest} | extra


# -- file reads ----------------------------------------------------------------------------------


def file_read_attempts(root: Path, module_tmp: Path) -> list[str]:
    return [
        "local:///proc/self/environ",
        "LOCAL:///proc/self/environ",
        "Local:///etc/passwd",
        "file:///proc/self/environ",
        "FILE:///etc/passwd",
        "file://localhost/etc/passwd",
        "file:/etc/passwd",
        "/etc/passwd",
        "/proc/self/environ",
        "//etc/passwd",
        "osfs:///etc/passwd",
        "memory:///x",
        f"{root}/{HOSTILE_DAG}/../../secret.txt",
        f"file://{root}/{HOSTILE_DAG}/../../secret.txt",
        f"{root}/{HOSTILE_DAG}/%2e%2e/%2e%2e/secret.txt",
        f"{root}/{HOSTILE_DAG}/./passwd.png",
        f"{root}/{HOSTILE_DAG}//passwd.png",
        f"{root}\\..\\secret.txt",
        f"{root}/{HOSTILE_DAG}/passwd.png",
        f"{root}/{HOSTILE_DAG}/secret.png",
        f"{root}/{HOSTILE_DAG}/everything/etc/passwd",
        f"{root}/{HOSTILE_DAG}/everything/proc/self/environ",
        f"{root}/{HOSTILE_DAG}/page.html",
        f"{root}-sibling/x.png",
        str(module_tmp / "secret.txt"),
        f"s3://{BUCKET}/secret.txt",
        f"s3://{BUCKET}/upscaled/../secret.txt",
        f"S3://{BUCKET}/upscaled/{HOSTILE_DAG}/ok.png",
        f"s3://{PRIVATE_BUCKET}/secret.txt",
        f"s3a://{BUCKET}/upscaled/{HOSTILE_DAG}/ok.png",
    ]


def test_no_file_outside_the_roots_is_read_through_any_scheme(
    cluster: AirflowCluster,
    mallory: Mallory,
    admin_headers: dict[str, str],
    root: Path,
    module_tmp: Path,
    legit_run: str,
) -> None:
    tasks = []
    for uri in file_read_attempts(root, module_tmp):
        # The connection fields an older record carried: ignored (records choose no connection).
        tasks.append(mallory.write("vibedream_result", result(uri, uri, output_conn_id="other_aws")))
        tasks.append(mallory.write("vibedream_batch_progress", progress(uri, output_conn_id="metadata_pg")))
    for headers in (admin_headers, {"Authorization": f"Bearer {mallory.token}"}):
        answers = ask_everything(cluster, headers, mallory.run_id, tasks)
        batch_pages = [a for a in answers if a.request.url.path.endswith("/batch") and a.status_code == 200]
        assert len(batch_pages) == len(tasks) // 2  # one per progress record; results have none
        # A manifest outside the roots is said to be so; one inside that is no manifest (a page of
        # HTML) shows unreadable lines; neither offers a thumbnail.
        assert batch_pages and all('alt="input"' not in a.text for a in batch_pages)
        # The refusal names its rule (a root's DAG folder, a manifest that is no .jsonl), never a path.
        said = ("cannot be read", "not under ", "not a .jsonl manifest", "unreadable manifest line")
        unsaid = [
            (str(a.request.url), a.text[-1500:]) for a in batch_pages if not any(w in a.text for w in said)
        ]
        assert not unsaid
    legit_results_still_show(cluster, admin_headers, legit_run)


# -- markup ----------------------------------------------------------------------------------------


def test_markup_in_every_field_is_text(
    cluster: AirflowCluster, mallory: Mallory, admin_headers: dict[str, str], root: Path, legit_run: str
) -> None:
    manifest = root / HOSTILE_DAG / "hostile-manifest.jsonl"
    manifest.write_text(
        json.dumps(
            {"input": MARKUP, "prediction_id": MARKUP, "status": MARKUP, "outputs": [MARKUP], "error": MARKUP}
        )
        + "\n"
        + json.dumps({"input": MARKUP, "status": "completed", "outputs": [MARKUP], "cost_cents": 2})
        + "\n"
    )
    fields = {
        "model_id": MARKUP,
        "target_resolution": MARKUP[:16],
        "output_format": MARKUP[:16],
        "created_at": MARKUP[:64],
        "completed_at": MARKUP[:64],
        "files": [{"uri": MARKUP, "bytes": 1, "width": 1, "height": 1, "format": MARKUP[:16]}],
    }
    tasks = [
        mallory.write("vibedream_result", result(MARKUP, MARKUP, **fields) | {"prediction_id": MARKUP}),
        mallory.write(
            "vibedream_batch_progress",
            progress(
                str(manifest), target_resolution=MARKUP[:16], output_format=MARKUP[:16], state="running"
            ),
        ),
        mallory.write("vibedream_batch_progress", progress(MARKUP)),
    ]
    answers = ask_everything(cluster, admin_headers, mallory.run_id, tasks, bytes_refused=False)
    pages = [a for a in answers if a.headers.get("content-type", "").startswith("text/html")]
    assert len(pages) >= 4
    for page in pages:
        assert "<script" not in page.text and "onerror=" not in page.text.replace("onerror=alert", "")
        assert "<img src=x" not in page.text and 'href="javascript:' not in page.text
    gallery = httpx.get(f"{cluster.base_url}/vibedream/gallery?dag_id={HOSTILE_DAG}", headers=admin_headers)
    assert "&lt;script&gt;" in gallery.text  # shown as text
    batch = httpx.get(route_url(cluster, "batch", mallory.run_id, tasks[1]), headers=admin_headers)
    assert batch.status_code == 200 and batch.text.count('data-kind="batch-image"') == 2
    legit_results_still_show(cluster, admin_headers, legit_run)


# -- server-side requests ------------------------------------------------------------------------


def test_the_api_server_contacts_no_address_for_a_record(
    cluster: AirflowCluster,
    mallory: Mallory,
    admin_headers: dict[str, str],
    internal: CountingServer,
    emulator: EmulatorProcess,
    root: Path,
    legit_run: str,
) -> None:
    port = internal.url.rsplit(":", 1)[1]
    targets = [
        f"{internal.url}/a.png",
        f"HTTP://127.0.0.1:{port}/b.png",
        f"Http://127.0.0.1:{port}/c.png",
        f"http://[::ffff:127.0.0.1]:{port}/d.png",
        f"http://localhost:{port}/e.png",
        f"http://2130706433:{port}/f.png",
        f"http://100.64.0.1:{port}/g.png",
        f"https://127.0.0.1:{port}/h.png",
        f"{emulator.base_url}/samples/64x64.png",
    ]
    manifest = root / HOSTILE_DAG / "ssrf-manifest.jsonl"
    manifest.write_text(
        "".join(json.dumps({"input": t, "status": "completed", "outputs": [t]}) + "\n" for t in targets)
    )
    tasks = [
        mallory.write("vibedream_result", result(t, t, vibedream_conn_id="metadata_pg")) for t in targets
    ]
    tasks.append(mallory.write("vibedream_batch_progress", progress(str(manifest))))
    tasks.append(mallory.write("vibedream_batch_progress", progress(f"{internal.url}/manifest.jsonl")))
    # The manifest itself lies under the root and may be served; what it names may not be fetched.
    answers = ask_everything(cluster, admin_headers, mallory.run_id, tasks, bytes_refused=False)
    thumbnails = [a.status_code for a in answers if a.request.url.path.endswith("/thumb")]
    assert set(thumbnails) == {403, 404}  # 403: not under a root; 404: the task has no such record
    assert internal.hits == []
    assert not [a for a in answers if a.is_redirect]  # not even the browser is sent there
    legit_results_still_show(cluster, admin_headers, legit_run)


# -- redirects -----------------------------------------------------------------------------------


def test_redirects_go_only_under_a_root_or_to_a_listed_host(
    cluster: AirflowCluster, mallory: Mallory, admin_headers: dict[str, str], s3: MotoS3
) -> None:
    refused = [
        "https://evil.example/x.png",
        "//evil.example/x.png",
        "/\\evil.example/x.png",
        "HTTPS://assets.vibedream.ai/outputs/x.png",
        "https://assets.vibedream.ai@evil.example/x.png",
        "https://assets.vibedream.ai.evil.example/x.png",
        "https://evil.example/assets.vibedream.ai",
        "https://[x/a.png",  # an unclosed bracket: the URL parser raises
        "http://a\uff03b/a.png",  # a host that normalises to a delimiter: the URL parser raises
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        f"s3://{PRIVATE_BUCKET}/secret.txt",
        f"s3://{BUCKET}/upscaled/other_dag/ok.png",  # under the root, in another DAG's folder
    ]
    for uri in refused:
        task = mallory.write("vibedream_result", result(uri))
        answer = httpx.get(route_url(cluster, "output", mallory.run_id, task), headers=admin_headers)
        assert answer.status_code == 403 and "location" not in answer.headers, (uri, answer.status_code)
    gallery = httpx.get(f"{cluster.base_url}/vibedream/gallery?dag_id={HOSTILE_DAG}", headers=admin_headers)
    assert gallery.status_code == 200  # those records are shown as text, never a failed page
    listed = "https://assets.vibedream.ai/outputs/p/1-0.png"
    answer = httpx.get(
        route_url(cluster, "output", mallory.run_id, mallory.write("vibedream_result", result(listed))),
        headers=admin_headers,
    )
    assert answer.status_code == 307 and answer.headers["location"] == listed
    # Under the S3 root: presigned with the root's connection, at the time of the click.
    in_root = f"s3://{BUCKET}/upscaled/{HOSTILE_DAG}/ok.png"
    task = mallory.write("vibedream_result", result(in_root, output_conn_id="metadata_pg"))
    answer = httpx.get(route_url(cluster, "output", mallory.run_id, task), headers=admin_headers)
    assert answer.status_code == 307 and answer.headers["location"].startswith(
        f"{s3.endpoint}/{BUCKET}/upscaled/{HOSTILE_DAG}/ok.png?"
    )
    assert httpx.get(answer.headers["location"]).content == png_bytes(64, 48)


# -- another DAG's files ---------------------------------------------------------------------------


def test_a_record_cannot_show_another_dags_files(
    cluster: AirflowCluster, mallory: Mallory, admin_headers: dict[str, str], root: Path, legit_run: str
) -> None:
    # Real files of the legitimate DAG, under the same root: its output, its batch's manifest, and
    # what a non-manifest can be passed off as one (a large image).
    output = cluster.xcom(LEGIT_DAG, legit_run, "upscale")["outputs"][0]
    manifest = cluster.xcom(LEGIT_DAG, legit_run, "batch", key="vibedream_batch_progress")["manifest"]
    tasks = [
        mallory.write("vibedream_result", result(output, output)),
        mallory.write("vibedream_batch_progress", progress(manifest)),
        mallory.write("vibedream_batch_progress", progress(f"{root}/{HOSTILE_DAG}/big.png")),
    ]
    stolen = Path(output.removeprefix("file://")).read_bytes()
    for headers in (admin_headers, {"Authorization": f"Bearer {mallory.token}"}):
        answers = ask_everything(cluster, headers, mallory.run_id, tasks)
        assert not any(stolen[:4096] in a.content for a in answers)
        assert all(legit_run not in a.text for a in answers if a.request.url.path.endswith("/batch"))
    legit_results_still_show(cluster, admin_headers, legit_run)


# -- bounded work ----------------------------------------------------------------------------------


def test_slow_huge_and_bomb_sources_do_not_stall_or_bloat_the_api_server(
    cluster: AirflowCluster, mallory: Mallory, admin_headers: dict[str, str], root: Path, legit_run: str
) -> None:
    api_server = psutil.Process(cluster.processes["api-server"].pid)

    def rss() -> int:
        return sum(p.memory_info().rss for p in [api_server, *api_server.children(recursive=True)])

    # A FIFO never ends, a bomb's header claims 169 megapixels, an icon hides the same bomb.
    for name in ("fifo.png", "bomb.png", "bomb.ico"):
        task = mallory.write("vibedream_result", result(f"{root}/{HOSTILE_DAG}/{name}"))
        started = time.monotonic()
        answer = httpx.get(
            route_url(cluster, "thumb-output", mallory.run_id, task), headers=admin_headers, timeout=60
        )
        assert answer.status_code == 404 and time.monotonic() - started < 10, (name, answer.text)
    # A 30 MB manifest: pages are read as streamed, not parsed whole.
    huge = root / HOSTILE_DAG / "huge-manifest.jsonl"
    line = json.dumps({"input": "s3://x/" + "y" * 280, "status": "failed", "error": "z" * 100}) + "\n"
    huge.write_text(line * (30 * 1024 * 1024 // len(line)))
    task = mallory.write("vibedream_batch_progress", progress(str(huge)))
    before = rss()
    for page in (1, 2, 3000, 100_000):
        answer = httpx.get(
            route_url(cluster, "batch", mallory.run_id, task) + f"&page={page}",
            headers=admin_headers,
            timeout=60,
        )
        assert answer.status_code == 200
    assert rss() - before < 150 * 1024 * 1024
    # 40 thumbnails of large images at once: the pool takes what it can, answers 503 with Retry-After
    # for the rest, and Airflow's own health endpoint keeps answering meanwhile.
    tasks = [
        mallory.write("vibedream_result", result(f"{root}/{HOSTILE_DAG}/many/{seed}.png"))
        for seed in range(40)
    ]
    health: list[float] = []
    stop = threading.Event()

    def watch_health() -> None:
        while not stop.is_set():
            started = time.monotonic()
            assert httpx.get(f"{cluster.base_url}/api/v2/monitor/health", timeout=30).status_code == 200
            health.append(time.monotonic() - started)

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    try:
        with ThreadPoolExecutor(40) as pool:
            answers = list(
                pool.map(
                    lambda t: httpx.get(
                        route_url(cluster, "thumb-output", mallory.run_id, t),
                        headers=admin_headers,
                        timeout=120,
                    ),
                    tasks,
                )
            )
    finally:
        stop.set()
        watcher.join(60)
    statuses = sorted({a.status_code for a in answers})
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    assert all(a.headers.get("retry-after") for a in answers if a.status_code == 503)
    assert health and max(health) < 5, health
    legit_results_still_show(cluster, admin_headers, legit_run)


# -- type confusion and bad parameters -----------------------------------------------------------


def test_type_confused_records_are_skipped_not_fatal(
    cluster: AirflowCluster, mallory: Mallory, admin_headers: dict[str, str], legit_run: str
) -> None:
    confused_results = [
        {"prediction_id": 1},
        {"prediction_id": "p", "outputs": {"a": 1}},
        {"prediction_id": "p", "outputs": "s3://x/y"},
        {"prediction_id": "p", "files": [1, 2]},
        {"prediction_id": "p", "cost_cents": "lots"},
        {"prediction_id": "p", "input": ["a"]},
        ["not", "a", "record"],
        "text",
        12,
        None,
        {"prediction_id": "p" * 100_000},
        {"prediction_id": "padded", "outputs": [], "junk": "A" * 2_000_000},  # never loaded: too large
    ]
    confused_progress = [
        {"images": "4"},
        {"images": 4, "done": "<b>3</b>"},
        {"images": 4, "failed": [1]},
        {"images": 4, "completed_images": {"x": 1}},
        {"images": 4, "state": 3},
        {"images": 10**30},
        {"images": 4, "cost_cents": "NaN"},
        {"images": 4, "updated_at": "yesterday"},
    ]
    tasks = [mallory.write("vibedream_result", value) for value in confused_results]
    tasks += [mallory.write("vibedream_batch_progress", value) for value in confused_progress]
    answers = ask_everything(cluster, admin_headers, mallory.run_id, tasks)
    for answer in answers:
        if "/vibedream/gallery" not in str(answer.url):
            assert answer.status_code == 404, (answer.request.url, answer.status_code, answer.text[:200])
    gallery = httpx.get(f"{cluster.base_url}/vibedream/gallery", headers=admin_headers)
    assert gallery.status_code == 200 and "unreadable record" in gallery.text
    legit_results_still_show(cluster, admin_headers, legit_run)


@pytest.mark.parametrize(
    "query",
    [
        "thumb?dag_id=d&run_id=r&task_id=t&which=input&map_index=100000000000000000000000",
        "thumb?dag_id=d&run_id=r&task_id=t&which=../etc",
        "thumb?dag_id=d&run_id=r&task_id=t&which=output&n=-1",
        "thumb?dag_id=d&run_id=r&task_id=t&which=output&line=99999999999999999999",
        "thumb?dag_id=d%00&run_id=r&task_id=t&which=output",
        "output?dag_id=d&run_id=r&task_id=" + "t" * 5000,
        "batch?dag_id=d&run_id=r%0a&task_id=t",
        "batch?dag_id=d&run_id=r&task_id=t&page=0",
        "gallery?page=-1",
        "gallery?since=yesterday",
        "gallery?dag_id=%00",
        "gallery?page=99999999999999999999",
        "gallery?until=9999-12-31",
        "gallery?since=9999-12-31",
        "manifest?dag_id=d&run_id=r",
        "static/../app.py",
        "static/gallery.css/../../templates/base.html",
    ],
)
def test_bad_parameters_answer_4xx_and_name_no_server_path(
    cluster: AirflowCluster, admin_headers: dict[str, str], module_tmp: Path, query: str
) -> None:
    answer = httpx.get(f"{cluster.base_url}/vibedream/{query}", headers=admin_headers)
    assert 400 <= answer.status_code < 500, (query, answer.status_code, answer.text[:300])
    assert str(module_tmp) not in answer.text and "site-packages" not in answer.text
