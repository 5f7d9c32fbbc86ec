"""The ledger beside the outputs, driven through the operators against the emulator over real
HTTP: pay once per image across task instances, runs and DAGs; a deliberate re-run pays; an image
whose submit outcome is unknown is never resent unless asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.errors import VibeDreamSubmissionStateUnknownError
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.lifecycle.identity import identity_of
from airflow_vibedream.lifecycle.ledger import LEDGER_DIR, Ledger, TaskRef, new_entry
from airflow_vibedream.lifecycle.outputs import download_policy
from tests.helpers import FakeTI
from tests.integration.emulated import jobs, upscale


def run(task: Any, run_id: str = "manual__1", task_id: str = "upscale") -> dict[str, Any]:
    ti = FakeTI()
    ti.run_id = run_id
    ti.task_id = task_id
    return dict(task.execute({"ti": ti}))


def entries(output: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((output / LEDGER_DIR / "entries").glob("*.json"))]


def test_a_second_run_reuses_the_stored_outputs_and_pays_nothing(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    first = run(upscale(vibedream_conn, tmp_path), "scheduled__day1")
    assert jobs(vibedream_conn) == 1 and not first.get("reused")
    [entry] = entries(tmp_path)
    assert entry["state"] == "completed" and entry["prediction_id"] == first["id"]
    assert entry["ask"] == {"target_resolution": "2k", "output_format": "png"}
    assert entry["identity"]["kind"] == "sha256" and entry["outputs"][0]["uri"] == first["outputs"][0]

    second = run(upscale(vibedream_conn, tmp_path), "scheduled__day2", task_id="other_task")
    assert jobs(vibedream_conn) == 1
    assert second["reused"] is True and second["cost_cents"] == 0
    assert second["id"] == first["id"] and second["outputs"] == first["outputs"]


def test_the_same_bytes_under_another_name_are_the_same_image(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    run(upscale(vibedream_conn, tmp_path, image=f"{vibedream_conn.base_url}/samples/64x48.png"))
    again = run(
        upscale(vibedream_conn, tmp_path, image=f"{vibedream_conn.base_url}/samples/64x48.png?copy=1")
    )
    assert jobs(vibedream_conn) == 1 and again["reused"] is True


def test_another_resolution_or_a_forced_rerun_pays(vibedream_conn: EmulatorServer, tmp_path: Path) -> None:
    run(upscale(vibedream_conn, tmp_path))
    run(upscale(vibedream_conn, tmp_path, target_resolution="4k"), "run2")
    assert jobs(vibedream_conn) == 2
    forced = run(upscale(vibedream_conn, tmp_path, reuse_outputs=False), "run3")
    assert jobs(vibedream_conn) == 3 and not forced.get("reused")


def test_changed_stored_outputs_are_not_reused(vibedream_conn: EmulatorServer, tmp_path: Path) -> None:
    first = run(upscale(vibedream_conn, tmp_path))
    stored = Path(first["outputs"][0].removeprefix("file://"))
    stored.write_bytes(b"not the image any more")
    # The job still exists at the API: the next run fetches its outputs again, and pays nothing.
    second = run(upscale(vibedream_conn, tmp_path), "run2")
    assert jobs(vibedream_conn) == 1 and not second.get("reused") and second["id"] == first["id"]
    assert Path(second["outputs"][0].removeprefix("file://")).read_bytes()[:4] == b"\x89PNG"
    [entry] = entries(tmp_path)
    assert entry["outputs"][0]["uri"] == second["outputs"][0]


def test_an_intent_with_no_id_is_never_resent_unless_asked(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    task = upscale(vibedream_conn, tmp_path)
    image = task.image
    policy = download_policy(VibeDreamHook().get_client().settings)
    ledger = Ledger(str(tmp_path), None)
    spec = task.job_spec()
    # What a task killed while its submit was in flight leaves behind.
    intent = new_entry(
        spec.model_id, spec.asked, identity_of(image, aws_conn_id=None, policy=policy), TaskRef.of(FakeTI())
    )
    assert ledger.claim(intent) is None
    with pytest.raises(AirflowFailException, match="resubmit_unknown=True") as raised:
        run(upscale(vibedream_conn, tmp_path), "run2")
    assert ledger.entry_uri(intent.key) in str(raised.value)
    assert isinstance(raised.value.__cause__, VibeDreamSubmissionStateUnknownError)
    assert jobs(vibedream_conn) == 0
    result = run(upscale(vibedream_conn, tmp_path, resubmit_unknown=True), "run2")
    assert jobs(vibedream_conn) == 1 and result["status"] == "completed"
    [entry] = entries(tmp_path)
    assert entry["state"] == "completed" and entry["prediction_id"] == result["id"]


def test_a_refused_submit_withdraws_its_intent(vibedream_conn: EmulatorServer, tmp_path: Path) -> None:
    from tests.integration.emulated import faults

    faults(vibedream_conn, {"route": "submit", "kind": "status", "status": 422, "times": 1})
    with pytest.raises(Exception, match=r"422|Unprocessable|invalid"):
        run(upscale(vibedream_conn, tmp_path))
    assert entries(tmp_path) == []
    run(upscale(vibedream_conn, tmp_path), "run2")
    assert jobs(vibedream_conn) == 1


def test_without_output_path_there_is_no_ledger(
    vibedream_conn: EmulatorServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run(upscale(vibedream_conn, tmp_path, output_path=None))
    run(upscale(vibedream_conn, tmp_path, output_path=None), "run2")
    assert jobs(vibedream_conn) == 2
    assert "ledger not used (no output_path)" in capsys.readouterr().out + caplog.text
