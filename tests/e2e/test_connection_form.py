"""The add-connection form of a real Airflow api-server, in headless Chromium: picking the VibeDream
type shows the relabelled fields (Base URL, API Key) and hides the unused ones."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import AirflowCluster, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("VIBEDREAM_CHROMIUM", "/usr/bin/chromium")
# As the machine's own Chromium check runs it: headless, no sandbox (root), and no background
# networking, whose connections a closed network refuses by the dozen.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_or_skip() -> str:
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"Chromium is required with CI=true; not found at {CHROMIUM} (make test installs it)")
    pytest.skip("Chromium not installed (apt-get install chromium, or set VIBEDREAM_CHROMIUM)")


def choose_type(page: Any, name: str) -> None:
    page.get_by_role("combobox").first.click()
    page.get_by_role("option", name=name, exact=True).click()


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowCluster]:
    home = tmp_path_factory.mktemp("browser")
    (home / "dags").mkdir()
    airflow = AirflowCluster(home / "airflow", home / "dags")
    try:
        airflow.migrate()
        airflow.start("api-server")
        wait_for(airflow._api_ready, timeout=120, what="the api-server")
        yield airflow
    finally:
        airflow.stop()


def test_add_connection_form_shows_the_vibedream_fields(
    api_server: AirflowCluster, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    executable = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    screenshot = tmp_path / "vibedream-connection-form.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(60_000)
            # The simple auth manager (everyone admin, as in the other end-to-end tests) logs the
            # browser in on its way to the page.
            page.goto(f"{api_server.base_url}/connections")
            page.get_by_role("button", name="Add Connection").click()
            form = page.get_by_role("dialog")
            # A control first: Airflow's generic type shows every field, so "hidden" below means
            # hidden by our ui-field-behaviour, not absent from this version's form.
            choose_type(page, "Generic")
            expect(form.get_by_text("Login", exact=True)).to_be_visible()
            choose_type(page, "VibeDream")
            expect(form.get_by_text("Base URL", exact=True)).to_be_visible()
            expect(form.get_by_text("API Key", exact=True)).to_be_visible()
            for hidden in ("Schema", "Login", "Port"):
                expect(form.get_by_text(hidden, exact=True)).to_have_count(0)
            expect(form.get_by_placeholder("https://api.vibedream.ai")).to_be_visible()
            api_key = form.get_by_placeholder("your VibeDream API key (empty: $VIBEDREAM_API_KEY)")
            expect(api_key).to_have_attribute("type", "password")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    record_property("screenshot", str(screenshot))  # shown at the end of the test run (conftest)
