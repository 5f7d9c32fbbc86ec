"""The gallery and the operator extra links in a real Airflow, driven in headless Chromium.

Airflow runs with several teams (``[core] multi_team``) and the simple auth manager's real users:
``alice`` reads team A's DAGs only, ``bob`` team B's only. The test makes runs of team A's DAGs
(a deferrable upscale from S3 into S3, a batch into a local folder, a batch with a stuck job), then:
alice logs in through Airflow's login page, opens the gallery from Airflow's navigation and sees the
thumbnails of those runs, sees a batch part-way done and then finished, and follows the task
instance's "VibeDream output" extra link to the stored image (a presigned S3 URL made at the click);
an anonymous visitor gets 401 and bob gets 403, with no image bytes, for the same URLs. Screenshots
go to the test's temp dir and their paths are printed at the end of the run."""

from __future__ import annotations

import io
import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from PIL import Image

from airflow_vibedream.emulator.process import EmulatorProcess
from tests.conftest import MotoS3, connection_json
from tests.e2e.cluster import AirflowCluster, wait_for
from tests.e2e.services import deferral_safe_emulator
from tests.e2e.test_connection_form import CHROMIUM_ARGS, chromium_or_skip

pytestmark = pytest.mark.e2e

TEAM_A_DAG = "vibedream_gallery_team_a"
PROGRESS_DAG = "vibedream_gallery_progress"
DAGS_SOURCE = Path(__file__).resolve().parent.parent / "dags" / "gallery"
INPUT_BUCKET = "gallery-in"
OUTPUT_BUCKET = "gallery-out"
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"RIFF")


def sample_png(width: int, height: int, seed: int) -> bytes:
    """A small gradient, different per seed, so thumbnails are recognisably different."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [
            ((x * 255 // width + seed * 70) % 256, y * 255 // height, (seed * 90) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gallery")


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    client = server.client()
    for bucket in (INPUT_BUCKET, OUTPUT_BUCKET):
        client.create_bucket(Bucket=bucket)
    for seed in range(8):
        client.put_object(Bucket=INPUT_BUCKET, Key=f"photos/{seed}.png", Body=sample_png(96, 64, seed))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def emulator(module_tmp: Path) -> Iterator[EmulatorProcess]:
    with deferral_safe_emulator(module_tmp) as process:
        yield process


@pytest.fixture(scope="module")
def users(module_tmp: Path) -> dict[str, str]:
    return {name: secrets.token_urlsafe(12) for name in ("admin", "alice", "bob")}


@pytest.fixture(scope="module")
def cluster(
    module_tmp: Path, s3: MotoS3, emulator: EmulatorProcess, users: dict[str, str]
) -> Iterator[AirflowCluster]:
    bundles = []
    for team in ("team_a", "team_b"):
        folder = module_tmp / f"dags_{team}"
        folder.mkdir()
        shutil.copy(DAGS_SOURCE / f"vibedream_gallery_{team}.py", folder)
        bundles.append(
            {
                "name": f"{team}_dags",
                "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(folder), "refresh_interval": 5},
                "team_name": team,
            }
        )
    passwords = module_tmp / "passwords.json"
    passwords.write_text(json.dumps(users))
    (module_tmp / "outputs").mkdir()
    airflow = AirflowCluster(
        module_tmp / "airflow",
        module_tmp / "dags_team_a",
        env={
            "AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(emulator.base_url),
            "AIRFLOW_CONN_AWS_DEFAULT": s3.connection_json(),
            "AIRFLOW__CORE__MULTI_TEAM": "True",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,alice:viewer:team_a,bob:viewer:team_b",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__VIBEDREAM__GALLERY_ROOTS": json.dumps(
                {
                    # Each output_path, and the inputs' prefix, which every reader may see.
                    str(module_tmp / "outputs" / "batch"): None,
                    str(module_tmp / "outputs" / "progress"): None,
                    f"s3://{INPUT_BUCKET}/photos/": {"conn_id": "aws_default", "shared": True},
                    f"s3://{OUTPUT_BUCKET}/upscaled/": "aws_default",
                }
            ),
            "AIRFLOW__VIBEDREAM__GALLERY_CACHE_DIR": str(module_tmp / "thumbnails"),
        },
    )
    try:
        airflow.migrate()
        for team in ("team_a", "team_b"):
            airflow.cli("teams", "create", team)
        airflow.start("api-server")
        airflow.start("scheduler")
        airflow.start("dag-processor")
        # With teams, a triggerer serves one team's triggers.
        airflow.start("triggerer", extra_args=("--team-name", "team_a"))
        wait_for(airflow._api_ready, timeout=120, what="the api-server")
        airflow.log_in_as("admin", users["admin"])
        for dag_id in (TEAM_A_DAG, PROGRESS_DAG, "vibedream_gallery_team_b"):
            airflow.wait_for_dag(dag_id)
        yield airflow
    finally:
        airflow.stop()


@pytest.fixture(scope="module")
def finished_run(cluster: AirflowCluster, module_tmp: Path) -> str:
    run_id = cluster.trigger(
        TEAM_A_DAG,
        {
            "image": f"s3://{INPUT_BUCKET}/photos/0.png",
            "output_s3": f"s3://{OUTPUT_BUCKET}/upscaled/",
            "batch": [f"s3://{INPUT_BUCKET}/photos/{seed}.png" for seed in (1, 2, 3)],
            "output_local": str(module_tmp / "outputs" / "batch"),
        },
    )
    assert cluster.wait_for_run(TEAM_A_DAG, run_id) == "success"
    return run_id


def ti_query(run_id: str, task_id: str, dag_id: str = TEAM_A_DAG, **extra: Any) -> str:
    return urlencode({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": -1, **extra})


def log_in(page: Any, base_url: str, username: str, password: str) -> None:
    """Through Airflow's own login page, as a person would."""
    page.goto(f"{base_url}/auth/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)


def extra_link(page: Any, task_instance_url: str, name: str) -> Any:
    """The extra link ``name`` as Airflow's task instance view shows it (in its Details tab)."""
    from playwright.sync_api import expect

    page.goto(task_instance_url)
    page.get_by_text("Details", exact=True).first.click()
    link = page.get_by_role("link", name=name)
    expect(link).to_be_visible(timeout=30_000)
    return link


def follow(context: Any, page: Any, link: Any) -> Any:
    """Click ``link`` as a person would; the page it opens (a new tab, or this one)."""
    if link.get_attribute("target") == "_blank":
        with context.expect_page() as opened:
            link.click()
        target = opened.value
    else:
        before = page.url
        link.click()
        page.wait_for_url(lambda url: url != before)
        target = page
    target.wait_for_load_state()
    return target


def embedded_frame(page: Any) -> Any:
    """The frame Airflow's UI embeds the gallery in."""
    handle = page.locator("iframe").first.element_handle()
    frame = handle.content_frame() if handle else None
    assert frame is not None and "/vibedream/gallery" in frame.url, frame and frame.url
    return frame


def all_images_loaded(frame: Any) -> bool:
    return bool(frame.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"))


def wait_for_images(frame: Any, what: str, cluster: AirflowCluster) -> None:
    """Every image of ``frame`` loaded; if not, say which ones did not, what the server answers now
    and what the gallery logged in the api-server."""
    try:
        wait_for(lambda: all_images_loaded(frame), timeout=60, what=what)
    except TimeoutError:
        broken = frame.evaluate("Array.from(document.images).filter(i => !i.naturalWidth).map(i => i.src)")
        answers = [(src, (r := frame.page.request.get(src)).status, r.text()[:300]) for src in broken]
        server_log = (cluster.home / "api-server.out").read_text(errors="replace").splitlines()
        said = [line for line in server_log if "VibeDream gallery" in line or "/vibedream/thumb" in line]
        raise AssertionError(f"{what}: not loaded: {answers}; api-server said: {said[-20:]}") from None


def test_extra_links_are_stored_for_the_task_instances(cluster: AirflowCluster, finished_run: str) -> None:
    links = cluster.api(
        "GET", f"/dags/{TEAM_A_DAG}/dagRuns/{finished_run}/taskInstances/upscale/links"
    ).json()
    assert links["extra_links"]["VibeDream output"].endswith(
        f"/vibedream/output?{ti_query(finished_run, 'upscale')}"
    )
    batch = cluster.api("GET", f"/dags/{TEAM_A_DAG}/dagRuns/{finished_run}/taskInstances/batch/links").json()
    assert "/vibedream/manifest?" in batch["extra_links"]["VibeDream manifest"]
    assert "/vibedream/batch?" in batch["extra_links"]["VibeDream gallery"]


def test_gallery_in_the_browser(
    cluster: AirflowCluster,
    finished_run: str,
    s3: MotoS3,
    users: dict[str, str],
    tmp_path: Path,
    record_property: pytest.RecordProperty,
) -> None:
    executable = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    base = cluster.base_url
    shots = {name: tmp_path / f"{name}.png" for name in ("gallery", "batch", "task-links", "output")}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(60_000)
            log_in(page, base, "alice", users["alice"])

            # The gallery from Airflow's navigation, embedded in Airflow's own page.
            page.goto(f"{base}/plugin/vibedream-gallery")
            frame = page.frame_locator("iframe").first
            cards = frame.locator('figure[data-kind="image"]')
            expect(cards).to_have_count(1)
            prediction = cluster.xcom(TEAM_A_DAG, finished_run, "upscale")["id"]
            expect(cards.first).to_have_attribute("data-prediction", prediction)
            expect(frame.locator('figure[data-kind="batch"] .progress')).to_have_attribute(
                "data-state", "finished"
            )
            expect(frame.get_by_test_id("entries")).to_have_text("2")
            inner = embedded_frame(page)
            wait_for_images(inner, "the gallery's thumbnails", cluster)
            assert inner.evaluate("document.images.length") == 2
            page.screenshot(path=str(shots["gallery"]))

            # The batch's page: three before/after pairs from its manifest.
            page.goto(f"{base}/vibedream/batch?{ti_query(finished_run, 'batch')}")
            expect(page.locator(".progress")).to_have_attribute("data-done", "3")
            expect(page.locator('figure[data-kind="batch-image"] img[alt="output"]')).to_have_count(3)
            wait_for_images(page.main_frame, "the batch's thumbnails", cluster)
            page.screenshot(path=str(shots["batch"]), full_page=True)

            # The task instance view, its extra link, and where it leads.
            link = extra_link(
                page, f"{base}/dags/{TEAM_A_DAG}/runs/{finished_run}/tasks/upscale", "VibeDream output"
            )
            page.screenshot(path=str(shots["task-links"]))
            output_page = follow(context, page, link)
            assert output_page.url.startswith(s3.endpoint) and "Signature" in output_page.url
            stored = cluster.xcom(TEAM_A_DAG, finished_run, "upscale")["outputs"][0]
            bucket, key = stored.removeprefix("s3://").split("/", 1)
            expected = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
            assert httpx.get(output_page.url).content == expected
            output_page.screenshot(path=str(shots["output"]))
        finally:
            browser.close()
    for path in shots.values():
        assert path.stat().st_size > 5_000
        record_property("screenshot", str(path))


@pytest.mark.parametrize("who", ["anonymous", "bob"])
def test_refused_without_access_and_no_image_bytes(
    cluster: AirflowCluster, finished_run: str, users: dict[str, str], who: str
) -> None:
    headers = {} if who == "anonymous" else {"Authorization": f"Bearer {cluster.token('bob', users['bob'])}"}
    expected = 401 if who == "anonymous" else 403
    base = f"{cluster.base_url}/vibedream"
    for path in (
        f"/thumb?{ti_query(finished_run, 'upscale', which='output')}",
        f"/thumb?{ti_query(finished_run, 'batch', which='input', line=0)}",
        f"/output?{ti_query(finished_run, 'upscale')}",
        f"/manifest?{ti_query(finished_run, 'batch')}",
        f"/batch?{ti_query(finished_run, 'batch')}",
        f"/gallery?dag_id={TEAM_A_DAG}",
    ):
        response = httpx.get(base + path, headers=headers, follow_redirects=False)
        assert response.status_code == expected, (path, response.status_code, response.text[:200])
        assert not response.content.startswith(IMAGE_MAGIC)
    if who == "bob":  # bob's own gallery: nothing of team A's
        page = httpx.get(f"{base}/gallery", headers=headers)
        assert page.status_code == 200
        assert TEAM_A_DAG not in page.text and 'data-kind="image"' not in page.text


def test_batch_progress_while_it_runs(
    cluster: AirflowCluster,
    emulator: EmulatorProcess,
    module_tmp: Path,
    users: dict[str, str],
    tmp_path: Path,
    record_property: pytest.RecordProperty,
) -> None:
    # The third submit's job never finishes: the batch is seen running with the others done.
    httpx.post(
        f"{emulator.base_url}/_emulator/faults",
        json={"rules": [{"route": "submit", "kind": "stuck", "every": 3, "times": 1}]},
    ).raise_for_status()
    run_id = cluster.trigger(
        PROGRESS_DAG,
        {
            "batch": [f"s3://{INPUT_BUCKET}/photos/{seed}.png" for seed in (4, 5, 6, 7)],
            "output_local": str(module_tmp / "outputs" / "progress"),
        },
    )
    headers = {"Authorization": f"Bearer {cluster.token('alice', users['alice'])}"}
    progress_url = (
        f"{cluster.base_url}/vibedream/api/progress?{ti_query(run_id, 'batch', dag_id=PROGRESS_DAG)}"
    )

    def progress() -> dict[str, Any] | None:
        response = httpx.get(progress_url, headers=headers)
        return response.json() if response.status_code == 200 else None

    running = wait_for(
        lambda: (p := progress()) and p["state"] == "running" and p["done"] == 3 and p,
        timeout=60,
        what="the batch to be seen running with 3 of 4 jobs done",
    )
    assert running["jobs"] == 4 and running["failed"] == 0 and running["cost_cents"] > 0
    executable = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    shot = tmp_path / "batch-running.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.set_default_timeout(60_000)
            log_in(page, cluster.base_url, "alice", users["alice"])
            page.goto(f"{cluster.base_url}/vibedream/batch?{ti_query(run_id, 'batch', dag_id=PROGRESS_DAG)}")
            expect(page.locator(".progress")).to_have_attribute("data-state", "running")
            expect(page.locator(".progress")).to_contain_text("3/4 jobs done")
            page.screenshot(path=str(shot))
            # The page refreshes itself: after the deadline it shows the finished batch.
            expect(page.locator(".progress")).to_have_attribute("data-state", "finished", timeout=90_000)
            expect(page.locator('figure[data-kind="batch-image"] img[alt="output"]')).to_have_count(3)
            expect(page.locator('figure[data-kind="batch-image"]').filter(has_text="timeout")).to_have_count(
                1
            )
        finally:
            browser.close()
    assert cluster.wait_for_run(PROGRESS_DAG, run_id) == "success"
    record_property("screenshot", str(shot))
