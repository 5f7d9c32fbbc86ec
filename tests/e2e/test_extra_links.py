"""The operator extra links and the gallery on whichever Airflow runs the tests: ``make test`` runs
this module on the newest Airflow and again on the lowest supported one.

A deferrable upscale and a deferrable batch write to a local folder the gallery may serve. In
headless Chromium the task instance view shows "VibeDream output" (and the batch's "VibeDream
manifest" / "VibeDream gallery"); following it gives the stored image's very bytes; the gallery,
reached from the navigation, shows the run's thumbnails."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow import __version__ as airflow_version

from airflow_vibedream.emulator.process import EmulatorProcess
from tests.conftest import connection_json
from tests.e2e.cluster import AirflowCluster
from tests.e2e.services import deferral_safe_emulator
from tests.e2e.test_connection_form import CHROMIUM_ARGS, chromium_or_skip
from tests.e2e.test_gallery import embedded_frame, extra_link, follow, wait_for_images

pytestmark = pytest.mark.e2e

DAG_ID = "vibedream_links"
DAG_FILE = Path(__file__).resolve().parent.parent / "dags" / "gallery" / f"{DAG_ID}.py"


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("links")


@pytest.fixture(scope="module")
def emulator(module_tmp: Path) -> Iterator[EmulatorProcess]:
    with deferral_safe_emulator(module_tmp) as process:
        yield process


@pytest.fixture(scope="module")
def cluster(module_tmp: Path, emulator: EmulatorProcess) -> Iterator[AirflowCluster]:
    dags = module_tmp / "dags"
    dags.mkdir()
    shutil.copy(DAG_FILE, dags)
    (module_tmp / "outputs").mkdir()
    airflow = AirflowCluster(
        module_tmp / "airflow",
        dags,
        env={
            "AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(emulator.base_url),
            "AIRFLOW__VIBEDREAM__GALLERY_ROOTS": json.dumps({str(module_tmp / "outputs"): None}),
            "AIRFLOW__VIBEDREAM__GALLERY_CACHE_DIR": str(module_tmp / "thumbnails"),
        },
    )
    try:
        airflow.start_all()
        airflow.wait_for_dag(DAG_ID)
        yield airflow
    finally:
        airflow.stop()


@pytest.fixture(scope="module")
def run_id(cluster: AirflowCluster, emulator: EmulatorProcess, module_tmp: Path) -> str:
    samples = [f"{emulator.base_url}/samples/{size}.png" for size in ("320x240", "240x320", "200x200")]
    run = cluster.trigger(
        DAG_ID, {"image": samples[0], "batch": samples[1:], "output": str(module_tmp / "outputs")}
    )
    assert cluster.wait_for_run(DAG_ID, run) == "success"
    return run


def test_extra_links_in_the_task_instance_view(
    cluster: AirflowCluster, run_id: str, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    executable = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    stored = Path(cluster.xcom(DAG_ID, run_id, "upscale")["outputs"][0].removeprefix("file://"))
    version = airflow_version.replace(".", "_")
    shots = [tmp_path / f"links-{version}.png", tmp_path / f"gallery-{version}.png"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(60_000)
            # The first visit logs the browser in (everyone is admin here); some versions then land on
            # the home page instead of the page asked for.
            page.goto(cluster.base_url)
            page.wait_for_load_state("networkidle")
            task_url = f"{cluster.base_url}/dags/{DAG_ID}/runs/{run_id}/tasks"
            extra_link(page, f"{task_url}/batch", "VibeDream manifest")
            expect(page.get_by_role("link", name="VibeDream gallery")).to_be_visible()
            link = extra_link(page, f"{task_url}/upscale", "VibeDream output")
            page.screenshot(path=str(shots[0]))
            href = link.get_attribute("href")
            assert href and "/vibedream/output?" in href
            # Followed with the browser's own session: the stored image's bytes. (This deployment makes
            # everyone admin; refusals are tested with real users in test_gallery.py.)
            response = context.request.get(href if href.startswith("http") else cluster.base_url + href)
            assert response.status == 200 and response.body() == stored.read_bytes()
            opened = follow(context, page, link)
            assert "/vibedream/output?" in opened.url

            page.goto(f"{cluster.base_url}/plugin/vibedream-gallery")
            frame = page.frame_locator("iframe").first
            expect(frame.locator('figure[data-kind="image"]')).to_have_count(1)
            # The input is at the emulator's http URL: named, never fetched by the api-server.
            expect(frame.locator('figure[data-kind="image"] .external')).to_have_text(
                "external image (not fetched)"
            )
            expect(frame.locator('figure[data-kind="batch"] .progress')).to_have_attribute("data-done", "2")
            inner = embedded_frame(page)
            wait_for_images(inner, "the gallery's thumbnails", cluster)
            page.screenshot(path=str(shots[1]))
        finally:
            browser.close()
    for path in shots:
        record_property("screenshot", str(path))
