"""The gallery app against a team that names its DAG so cleaning would fold it into another team's
folder: team A reads DAG ``reports``, team B reads DAG ``reports_``, both store under one gallery
root. Each team writes records in its own DAG pointing at the other's files (XCom is writable by
anyone who may write XCom for their DAG); every route must refuse them with no bytes.

The app is the real one (:func:`airflow_vibedream.plugins.app.create_app`); only what needs a
running Airflow is stood in for: the user (a header), the auth manager's readable DAGs, and the XCom
lookup (:func:`airflow_vibedream.plugins.queries.one`). ``tests/e2e/test_gallery_hostile.py`` does
the same through a real api-server."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from PIL import Image

from airflow_vibedream.files.storage import safe_segment
from airflow_vibedream.plugins import access, queries
from airflow_vibedream.plugins import app as gallery
from airflow_vibedream.plugins.manifests import ManifestPages
from airflow_vibedream.plugins.roots import GalleryRoots
from airflow_vibedream.plugins.sources import ReadBounds
from airflow_vibedream.plugins.thumbnails import ThumbnailCache, ThumbnailPool
from airflow_vibedream.tasks.manifest import manifest_uri
from airflow_vibedream.tasks.records import (
    PROGRESS_XCOM_KEY,
    RESULT_XCOM_KEY,
    BatchProgress,
    ImageResult,
)

RUN = "manual__2026-01-01T00:00:00+00:00"
#: Who reads which DAG (the auth manager's answer).
READERS = {"alice": {"reports"}, "bob": {"reports_"}}
#: The DAG of each team's records.
DAG_OF = {"alice": "reports", "bob": "reports_"}


def _png(colour: tuple[int, int, int], marker: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "PNG", pnginfo=_text_chunk(marker))
    return buffer.getvalue()


def _text_chunk(marker: bytes) -> Any:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("owner", marker.decode())
    return info


class Team:
    """One team's files, stored where the operators store them (named by ``safe_segment``)."""

    def __init__(self, root: Path, dag_id: str, colour: tuple[int, int, int]) -> None:
        self.dag_id = dag_id
        self.marker = f"secret-of-{dag_id}".encode()
        folder = root / safe_segment(dag_id) / safe_segment(RUN)
        # A file name of its own (its prediction's), and folders that may exist: were the two DAGs'
        # folders one (as the old cleaning made them), the tests below would see the leak itself.
        self.output = folder / "upscale" / f"p-{safe_segment(dag_id)}-0.png"
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_bytes(_png(colour, self.marker))
        self.manifest = Path(manifest_uri(str(root), dag_id, RUN, "batch", None).removeprefix("file://"))
        self.manifest.parent.mkdir(parents=True, exist_ok=True)
        line = {"input": f"s3://in/{dag_id}-{self.marker.decode()}.png", "status": "completed"}
        self.manifest.write_text(json.dumps({**line, "outputs": [f"file://{self.output}"]}) + "\n")


@pytest.fixture
def teams(tmp_path: Path) -> dict[str, Team]:
    root = tmp_path / "outputs"
    return {"alice": Team(root, "reports", (255, 0, 0)), "bob": Team(root, "reports_", (0, 0, 255))}


@pytest.fixture
def records() -> dict[tuple[str, str, str, int, str], Any]:
    """XCom as the app reads it: (dag, run, task, map index, key) -> record."""
    return {}


@pytest.fixture
def client(
    tmp_path: Path, teams: dict[str, Team], records: dict[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    settings = gallery.Settings()
    # The cached properties, set before first use: no Airflow configuration is read.
    settings.__dict__.update(
        roots=GalleryRoots.parse(json.dumps({str(tmp_path / "outputs"): None})),
        redirect_hosts=frozenset(),
        image_bounds=ReadBounds(),
        manifests=ManifestPages(ReadBounds(), gallery.PER_PAGE),
        cache=ThumbnailCache(tmp_path / "thumbnails", 16 * 1024 * 1024),
        pool=ThumbnailPool(),
        ui_root="",
    )
    monkeypatch.setattr(gallery, "settings", settings)

    def readable(user: str) -> set[str]:
        return READERS[user]

    monkeypatch.setattr(access, "readable_dag_ids", readable)  # what require_dag asks
    monkeypatch.setattr(gallery, "readable_dag_ids", readable)
    monkeypatch.setattr(queries, "one", lambda *key: records.get(key))

    def user(request: Request) -> str:
        return request.headers["x-user"]

    app = gallery.create_app()
    app.dependency_overrides[access.user_dependency()] = user
    with TestClient(app) as test_client:
        yield test_client


def _write_records(records: dict[Any, Any], writer: str, output: Path, manifest: Path) -> None:
    """``writer``'s records in its own DAG, pointing at ``output`` and ``manifest``."""
    dag_id = DAG_OF[writer]
    records[(dag_id, RUN, "upscale", -1, RESULT_XCOM_KEY)] = ImageResult(
        prediction_id="p", input=f"file://{output}", outputs=[f"file://{output}"]
    )
    records[(dag_id, RUN, "batch", -1, PROGRESS_XCOM_KEY)] = BatchProgress(
        images=1, state="finished", manifest=f"file://{manifest}"
    )


def _ask_everything(client: TestClient, reader: str) -> list[Any]:
    """Every route that serves bytes of a record's files, as ``reader`` for its own DAG."""
    ident = {"dag_id": DAG_OF[reader], "run_id": RUN}
    headers = {"x-user": reader}
    single = {**ident, "task_id": "upscale"}
    batch = {**ident, "task_id": "batch"}
    return [
        client.get("/output", params=single, headers=headers),
        client.get("/thumb", params={**single, "which": "output"}, headers=headers),
        client.get("/thumb", params={**single, "which": "input"}, headers=headers),
        client.get("/manifest", params=batch, headers=headers),
        client.get("/batch", params=batch, headers=headers),
        client.get("/thumb", params={**batch, "which": "output", "line": 0}, headers=headers),
    ]


def test_each_team_is_served_its_own_files(
    client: TestClient, teams: dict[str, Team], records: dict[Any, Any]
) -> None:
    # The control: the same routes serve a team's own files, so a refusal below is the folder rule.
    for name, team in teams.items():
        _write_records(records, name, team.output, team.manifest)
        output, thumb_output, thumb_input, manifest, batch, thumb_line = _ask_everything(client, name)
        assert output.status_code == 200 and team.marker in output.content
        assert all(a.status_code == 200 for a in (thumb_output, thumb_input, manifest, batch, thumb_line))
        assert thumb_output.headers["content-type"] == "image/webp"
        assert team.marker in manifest.content and team.marker in batch.content


@pytest.mark.parametrize(("reader", "victim"), [("bob", "alice"), ("alice", "bob")])
def test_a_record_cannot_show_the_other_teams_files(
    client: TestClient, teams: dict[str, Team], records: dict[Any, Any], reader: str, victim: str
) -> None:
    # The reader's own DAG's records point into the victim's folder: its image and its manifest.
    stolen = teams[victim]
    _write_records(records, reader, stolen.output, stolen.manifest)
    answers = _ask_everything(client, reader)
    output, thumb_output, thumb_input, manifest, batch, thumb_line = answers
    for answer in (output, thumb_output, thumb_input, manifest, thumb_line):
        assert answer.status_code == 403, (answer.request.url, answer.status_code)
    # Each refusal names the rule that kept the file out (the reader's own DAG folder of the root,
    # the root named by its place in the setting), never the api-server's path of the root.
    rule = f"not under gallery root #1/{safe_segment(DAG_OF[reader])}/"
    assert batch.status_code == 200 and rule in batch.text
    for answer in (output, thumb_output, manifest):
        assert rule in answer.json()["detail"] and "shared" in answer.json()["detail"]
    for answer in answers:
        assert stolen.marker not in answer.content and stolen.output.read_bytes()[:64] not in answer.content
        assert str(stolen.output.parents[3]) not in answer.text
    # And the victim's DAG stays closed to the reader by the auth manager.
    refused = client.get(
        "/output",
        params={"dag_id": DAG_OF[victim], "run_id": RUN, "task_id": "upscale"},
        headers={"x-user": reader},
    )
    assert refused.status_code == 403


def test_the_two_teams_files_are_in_different_folders(teams: dict[str, Team]) -> None:
    # What the old cleaning folded into one "reports/" folder: two folders, two manifests.
    assert teams["alice"].output.parents[2] != teams["bob"].output.parents[2]
    assert teams["alice"].manifest != teams["bob"].manifest
