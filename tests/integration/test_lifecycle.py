"""The job lifecycle against the emulator over real HTTP: what a retry, a clear or an interruption
may adopt, repeat or drop, counted in jobs the emulator actually created."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, AirflowTaskTimeout
from airflow.sdk.execution_time.timeout import timeout

from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.jobs.batch import SubmitsStopped
from airflow_vibedream.jobs.signing import RecordSigner
from airflow_vibedream.jobs.single import STATE_KEY
from airflow_vibedream.jobs.submissions import SubmissionRecord
from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from tests.conftest import TEST_KEY, emulator_stats
from tests.helpers import FakeStateStore, FakeTI, recorded
from tests.integration.emulated import faults, jobs, upscale


def batch(
    emulator: EmulatorServer, tmp_path: Path, count: int, **kwargs: Any
) -> VibeDreamBatchUpscaleOperator:
    values: dict[str, Any] = {
        "task_id": "batch",
        "images": [f"{emulator.base_url}/samples/{40 + i}x30.png" for i in range(count)],
        "target_resolution": "2k",
        "output_format": "jpeg",
        "output_path": str(tmp_path),
        "max_concurrency": 2,
        "poll_interval": 0.1,
        "deferrable": False,
        **kwargs,
    }
    return VibeDreamBatchUpscaleOperator(**values)


def manifest_lines(tmp_path: Path) -> list[dict[str, Any]]:
    [path] = tmp_path.rglob("manifest.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- one image ------------------------------------------------------------------------------------------


def test_a_garbage_2xx_on_submit_fails_without_retry_after_one_job(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    faults(vibedream_conn, {"route": "submit", "kind": "garbage", "after_create": True})
    store = FakeStateStore()
    with pytest.raises(AirflowFailException, match="submission state unknown") as info:
        upscale(vibedream_conn, tmp_path, retries=2).execute({"ti": FakeTI(), "task_state_store": store})
    assert "HTTP 200 with an unreadable answer" in str(info.value)
    assert jobs(vibedream_conn) == 1  # created, and never sent again
    assert emulator_stats(vibedream_conn.base_url)["submissions"] == 1


def test_a_clear_after_the_resolution_changed_submits_anew(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    store = FakeStateStore()
    first = upscale(vibedream_conn, tmp_path).execute({"ti": FakeTI(), "task_state_store": store})
    again = upscale(vibedream_conn, tmp_path).execute({"ti": FakeTI(), "task_state_store": store})
    assert again["id"] == first["id"] and jobs(vibedream_conn) == 1  # same input: adopted
    changed = upscale(vibedream_conn, tmp_path, target_resolution="4k").execute(
        {"ti": FakeTI(), "task_state_store": store}
    )
    assert changed["id"] != first["id"] and jobs(vibedream_conn) == 2
    assert (first["files"][0]["width"], changed["files"][0]["width"]) == (2048, 3840)


def test_a_completed_prediction_whose_outputs_expired_is_submitted_anew(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    store = FakeStateStore()
    first = upscale(vibedream_conn, tmp_path).execute({"ti": FakeTI(), "task_state_store": store})
    # Its stored copy is gone too (else the ledger reuses it: tests/integration/test_ledger.py).
    Path(first["outputs"][0].removeprefix("file://")).unlink()
    faults(vibedream_conn, {"route": "output", "kind": "status", "status": 410, "times": 1})
    second = upscale(vibedream_conn, tmp_path).execute({"ti": FakeTI(), "task_state_store": store})
    assert second["id"] != first["id"] and second["status"] == "completed"
    assert jobs(vibedream_conn) == 2
    assert store.values[STATE_KEY]["prediction_id"] == second["id"]
    assert Path(second["outputs"][0].removeprefix("file://")).is_file()


# -- a batch --------------------------------------------------------------------------------------------


def test_a_presign_error_mid_batch_records_every_id_and_the_retry_pays_for_nothing_twice(
    vibedream_conn: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = batch(vibedream_conn, tmp_path, count=10)
    real_payload = operator._payload
    calls = {"n": 0}

    def flaky_payload(item: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("presign failed")
        return real_payload(item)

    monkeypatch.setattr(operator, "_payload", flaky_payload)
    store = FakeStateStore()
    with pytest.raises(RuntimeError, match="presign failed"):
        operator.execute({"ti": FakeTI(), "task_state_store": store})
    created = jobs(vibedream_conn)
    assert 1 <= created < 10
    assert len(store.values) == created  # every job that exists is recorded
    monkeypatch.setattr(operator, "_payload", real_payload)
    summary = operator.execute({"ti": FakeTI(), "task_state_store": store})
    assert summary["completed"] == 10 and jobs(vibedream_conn) == 10
    assert len(manifest_lines(tmp_path)) == 10


def test_an_execution_timeout_mid_batch_records_every_id_and_the_retry_completes_it(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    # Slow submits, two at a time: 12 images take ~12 s; Airflow's own timeout (SIGALRM) cuts at 4 s
    # (after the inputs are identified and their headers read, even on a busy machine).
    faults(vibedream_conn, {"route": "submit", "kind": "slow", "delay": 2.0})
    operator = batch(vibedream_conn, tmp_path, count=12)
    store = FakeStateStore()
    with pytest.raises(AirflowTaskTimeout), timeout(4):
        operator.execute({"ti": FakeTI(), "task_state_store": store})
    created = jobs(vibedream_conn)
    assert 1 <= created < 12
    assert len(store.values) == created
    faults(vibedream_conn)  # the retry submits at full speed
    summary = operator.execute({"ti": FakeTI(), "task_state_store": store})
    assert summary["completed"] == 12 and jobs(vibedream_conn) == 12
    assert [line["status"] for line in manifest_lines(tmp_path)] == ["completed"] * 12


def test_on_kill_stops_the_submits_and_keeps_every_id(vibedream_conn: EmulatorServer, tmp_path: Path) -> None:
    faults(vibedream_conn, {"route": "submit", "kind": "slow", "delay": 0.3})
    operator = batch(vibedream_conn, tmp_path, count=20)
    store = FakeStateStore()
    started = threading.Event()
    original = operator._payload

    def payload(item: Any) -> dict[str, Any]:
        started.set()
        return original(item)

    operator._payload = payload  # type: ignore[method-assign]
    killer = threading.Thread(target=lambda: started.wait(10) and operator.on_kill())
    killer.start()
    with pytest.raises(SubmitsStopped):
        operator.execute({"ti": FakeTI(), "task_state_store": store})
    killer.join()
    created = jobs(vibedream_conn)
    assert created < 20 and len(store.values) == created


def test_an_unknown_submission_is_never_resent_and_the_error_names_it(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    faults(
        vibedream_conn, {"route": "submit", "kind": "garbage", "after_create": True, "every": 3, "times": 1}
    )
    operator = batch(vibedream_conn, tmp_path, count=4, max_concurrency=1)
    store = FakeStateStore()
    with pytest.raises(AirflowFailException, match="Submission state unknown") as info:
        operator.execute({"ti": FakeTI(), "task_state_store": store})
    lines = manifest_lines(tmp_path)
    [unknown] = [line for line in lines if line["status"] == "submission_state_unknown"]
    assert unknown["input"] in str(info.value) and unknown["prediction_id"] is None
    assert jobs(vibedream_conn) == 4  # the garbage answer's job exists too
    # A retry (or a clear) reuses the three, and does not resend the unknown one.
    with pytest.raises(AirflowFailException, match="Submission state unknown"):
        operator.execute({"ti": FakeTI(), "task_state_store": store})
    assert jobs(vibedream_conn) == 4
    assert emulator_stats(vibedream_conn.base_url)["submissions"] == 4


def test_a_404_fails_one_image_in_the_worker_loop_not_the_batch(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    operator = batch(vibedream_conn, tmp_path, count=3, fail_on_error=False)
    gone = operator.batch_images()[1]
    record = SubmissionRecord(gone.spec.fingerprint, dict(gone.spec.asked), "no-such-prediction", 2)
    summary = operator.execute(
        {
            "ti": FakeTI(),
            "task_state_store": FakeStateStore(
                {gone.key: recorded(RecordSigner(TEST_KEY), record.to_json())}
            ),
        }
    )
    assert (summary["completed"], summary["failed"]) == (2, 1)
    [failed] = [line for line in manifest_lines(tmp_path) if line["status"] == "failed"]
    assert failed["prediction_id"] == "no-such-prediction" and "404" in failed["error"]


def test_transient_failures_leave_the_batch_retryable(vibedream_conn: EmulatorServer, tmp_path: Path) -> None:
    # A 429 refuses the submit (surely no job): that image is not submitted, and a retry may send it.
    faults(vibedream_conn, {"route": "submit", "kind": "status", "status": 429, "times": 10})
    operator = batch(vibedream_conn, tmp_path, count=2, max_concurrency=1)
    with pytest.raises(AirflowException) as info:
        operator.execute({"ti": FakeTI(), "task_state_store": FakeStateStore()})
    assert type(info.value) is AirflowException  # not AirflowFailException
    assert {line["status"] for line in manifest_lines(tmp_path)} >= {"skipped"}


def test_an_unexpected_error_storing_one_image_still_writes_the_manifest(
    vibedream_conn: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_vibedream.files.outputs import OutputTarget

    real_store = OutputTarget.store
    calls = {"n": 0}

    def store(self: OutputTarget, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_store(self, *args, **kwargs)

    monkeypatch.setattr(OutputTarget, "store", store)
    with pytest.raises(AirflowException, match="1 of 3 images failed") as info:
        batch(vibedream_conn, tmp_path, count=3, max_concurrency=1).execute({"ti": FakeTI()})
    assert type(info.value) is AirflowException  # a retry may store it
    lines = manifest_lines(tmp_path)
    assert sorted(line["status"] for line in lines) == ["completed", "completed", "failed"]
    assert "OSError: disk full" in next(line["error"] for line in lines if line["status"] == "failed")
