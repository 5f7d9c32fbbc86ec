"""VibeDreamBatchUpscaleOperator and VibeDreamBatchTrigger against the emulator over real HTTP."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, TaskDeferred

from airflow_vibedream.client import ClientSettings, UpscaleRequest, VibeDreamClient
from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.emulator.imaging import sample_image
from airflow_vibedream.jobs.batch import RateLimiter
from airflow_vibedream.jobs.signing import RecordSigner
from airflow_vibedream.jobs.submissions import SubmissionRecord
from airflow_vibedream.operators.batch import XCOM_SUBMISSIONS, VibeDreamBatchUpscaleOperator
from airflow_vibedream.triggers.vibedream import VibeDreamBatchTrigger
from tests.conftest import TEST_KEY, MotoS3, emulator_stats
from tests.helpers import FakeStateStore, FakeTI, recorded
from tests.integration.emulated import fire


def batch(
    emulator: EmulatorServer, output: Path, count: int = 5, **kwargs: Any
) -> VibeDreamBatchUpscaleOperator:
    values: dict[str, Any] = {
        "task_id": "batch",
        "images": [f"{emulator.base_url}/samples/{100 + i}x80.png" for i in range(count)],
        "target_resolution": "2k",
        "output_format": "jpeg",
        "output_path": str(output),
        "max_concurrency": 2,
        "poll_interval": 0.1,
        "deferrable": False,
        **kwargs,
    }
    return VibeDreamBatchUpscaleOperator(**values)


def recorded_earlier(
    emulator: EmulatorServer, operator: VibeDreamBatchUpscaleOperator, indices: list[int], cost: int = 2
) -> dict[str, Any]:
    """What an earlier try of ``operator`` recorded after submitting images ``indices`` for real."""
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=emulator.base_url))
    items = operator.batch_images()
    return {
        # Signed as a task signs (no record_secret: the connection's API key).
        items[i].key: recorded(
            RecordSigner(TEST_KEY),
            SubmissionRecord(
                items[i].spec.fingerprint,
                dict(items[i].spec.asked),
                client.upscale(UpscaleRequest(items[i].image, "2k", "jpeg")).id,
                cost,
            ).to_json(),
        )
        for i in indices
    }


def manifest(summary: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(summary["manifest"].removeprefix("file://"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_in_the_worker_writes_outputs_and_a_manifest(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    store = FakeStateStore()
    summary = batch(vibedream_conn, tmp_path).execute({"ti": FakeTI(), "task_state_store": store})
    assert summary["total"] == summary["completed"] == 5 and summary["failed"] == 0
    assert summary["total_cost_cents"] == 10
    lines = manifest(summary)
    assert [line["status"] for line in lines] == ["completed"] * 5
    assert lines[0]["input"].endswith("/samples/100x80.png")
    assert all(Path(line["outputs"][0].removeprefix("file://")).is_file() for line in lines)
    assert emulator_stats(vibedream_conn.base_url)["accepted_submissions"] == 5
    assert len(store.values) == 5  # one persisted submission per image


def test_a_retry_reuses_recorded_predictions(vibedream_conn: EmulatorServer, tmp_path: Path) -> None:
    operator = batch(vibedream_conn, tmp_path)
    earlier = recorded_earlier(vibedream_conn, operator, [0, 1, 2])
    store = FakeStateStore(earlier)
    summary = operator.execute({"ti": FakeTI(), "task_state_store": store})
    assert summary["completed"] == 5
    assert emulator_stats(vibedream_conn.base_url)["accepted_submissions"] == 5  # 3 earlier + 2 now
    ids = [line["prediction_id"] for line in manifest(summary)]
    assert ids[:3] == [record["prediction_id"] for record in earlier.values()]


def test_a_retry_after_the_list_changed_gives_each_image_its_own_job(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    """Reordered, one image gone, one new, and a different resolution for the same list: each image
    gets the job made for exactly its request, never its neighbour's."""
    first = batch(vibedream_conn, tmp_path / "first", count=3)
    earlier = recorded_earlier(vibedream_conn, first, [0, 1, 2])
    by_image = {record["asked"]["image"]: record["prediction_id"] for record in earlier.values()}
    changed = batch(vibedream_conn, tmp_path / "second", count=4)
    changed.images = [changed.images[3], changed.images[1], changed.images[0]]  # type: ignore[index]
    summary = changed.execute({"ti": FakeTI(), "task_state_store": FakeStateStore(earlier)})
    lines = manifest(summary)
    assert [line["prediction_id"] == by_image.get(line["input"]) for line in lines] == [False, True, True]
    assert emulator_stats(vibedream_conn.base_url)["accepted_submissions"] == 3 + 1
    rescaled = batch(vibedream_conn, tmp_path / "third", count=3, target_resolution="4k")
    summary = rescaled.execute({"ti": FakeTI(), "task_state_store": FakeStateStore(earlier)})
    assert not {line["prediction_id"] for line in manifest(summary)} & set(by_image.values())
    assert emulator_stats(vibedream_conn.base_url)["accepted_submissions"] == 4 + 3


def test_fail_on_error_fails_after_writing_the_manifest(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    rule = {"route": "submit", "kind": "fail_prediction", "times": 1}
    httpx.post(f"{vibedream_conn.base_url}/_emulator/faults", json={"rules": [rule]}).raise_for_status()
    with pytest.raises(AirflowException, match="1 of 4 images failed; see the manifest"):
        batch(vibedream_conn, tmp_path, count=4).execute({"ti": FakeTI()})
    [path] = tmp_path.rglob("manifest.jsonl")
    statuses = sorted(json.loads(line)["status"] for line in path.read_text().splitlines())
    assert statuses == ["completed", "completed", "completed", "failed"]


def test_fail_on_error_false_returns_the_summary(vibedream_conn: EmulatorServer, tmp_path: Path) -> None:
    rule = {"route": "submit", "kind": "fail_prediction", "times": 1}
    httpx.post(f"{vibedream_conn.base_url}/_emulator/faults", json={"rules": [rule]}).raise_for_status()
    summary = batch(vibedream_conn, tmp_path, count=3, fail_on_error=False).execute({"ti": FakeTI()})
    assert (summary["completed"], summary["failed"]) == (2, 1)
    [failed] = [line for line in manifest(summary) if line["status"] == "failed"]
    assert "content moderation" in failed["error"]


def test_bad_image_is_named_and_nothing_is_sent(vibedream_conn: EmulatorServer, tmp_path: Path) -> None:
    operator = batch(vibedream_conn, tmp_path, count=3)
    operator.images = [*operator.images, "ftp://host/x.png"]  # type: ignore[misc]
    with pytest.raises(AirflowFailException, match=r"images\[3\] must be an http\(s\) URL or s3://"):
        operator.execute({"ti": FakeTI()})
    assert emulator_stats(vibedream_conn.base_url).get("requests", 0) == 0


def test_a_batch_over_max_cost_is_refused_before_any_submit(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    # 5 images x 2 cents = 10 cents, over a 9-cent budget.
    with pytest.raises(AirflowFailException, match=r"max_cost_cents: the batch would cost about 10 cents"):
        batch(vibedream_conn, tmp_path, max_cost_cents=9).execute({"ti": FakeTI()})
    assert emulator_stats(vibedream_conn.base_url).get("submissions", 0) == 0
    assert not list(tmp_path.iterdir())  # no manifest either: nothing happened


def test_the_budget_counts_what_an_earlier_try_spent(vibedream_conn: EmulatorServer, tmp_path: Path) -> None:
    operator = batch(vibedream_conn, tmp_path, max_cost_cents=10, cost_cents_per_image=2)
    # An earlier try submitted image 0 and was billed 4 cents for it: 4 + 4 x 2 = 12 > 10.
    store = FakeStateStore(recorded_earlier(vibedream_conn, operator, [0], cost=4))
    with pytest.raises(AirflowFailException, match="about 12 cents"):
        operator.execute({"ti": FakeTI(), "task_state_store": store})
    assert emulator_stats(vibedream_conn.base_url)["accepted_submissions"] == 1  # the earlier one only


def test_a_batch_within_max_cost_runs(vibedream_conn: EmulatorServer, tmp_path: Path) -> None:
    summary = batch(vibedream_conn, tmp_path, max_cost_cents=10).execute({"ti": FakeTI()})
    assert summary["completed"] == 5 and summary["total_cost_cents"] == 10


@pytest.mark.parametrize(
    ("field", "value"), [("max_cost_cents", -1), ("max_cost_cents", "ten"), ("cost_cents_per_image", None)]
)
def test_bad_budget_settings_name_the_field(
    vibedream_conn: EmulatorServer, tmp_path: Path, field: str, value: object
) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be a finite number >= 0"):
        batch(vibedream_conn, tmp_path, **{field: value})


def test_deferrable_batch_defers_once_for_all(vibedream_conn: EmulatorServer, tmp_path: Path) -> None:
    with pytest.raises(TaskDeferred) as info:
        batch(vibedream_conn, tmp_path, deferrable=True).execute({"ti": FakeTI()})
    trigger = info.value.trigger
    assert isinstance(trigger, VibeDreamBatchTrigger) and len(trigger.prediction_ids) == 5


async def test_batch_trigger_reports_failures_and_timeouts(vibedream_conn: EmulatorServer) -> None:
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=vibedream_conn.base_url))
    image = f"{vibedream_conn.base_url}/samples/64x64.png"
    ok = [client.upscale(UpscaleRequest(image, "2k", "jpeg")).id for _ in range(3)]
    bad = client.upscale(UpscaleRequest("http://127.0.0.1:9/none.png", "2k", "jpeg")).id
    [event] = [e.payload async for e in VibeDreamBatchTrigger([*ok, bad], poll_interval=0.1).run()]
    assert event["status"] == "success" and event["total"] == 4 and event["pending"] == []
    assert list(event["failed"]) == [bad]
    vibedream_conn.state.faults.replace([{"route": "submit", "kind": "stuck"}])
    stuck = client.upscale(UpscaleRequest(image, "2k", "jpeg")).id
    trigger = VibeDreamBatchTrigger([ok[0], stuck], poll_interval=0.1, end_time=time.time() + 1)
    [event] = [e.payload async for e in trigger.run()]
    assert event["status"] == "timeout" and event["pending"] == [stuck]


def test_s3_prefix_is_listed(vibedream_conn: EmulatorServer, moto_s3: MotoS3, tmp_path: Path) -> None:
    client = moto_s3.client()
    for name in ("a.png", "b.jpg", "notes.txt"):
        client.put_object(Bucket=moto_s3.bucket, Key=f"batch-in/{name}", Body=sample_image(64, 48, "PNG"))
    summary = VibeDreamBatchUpscaleOperator(
        task_id="batch",
        s3_prefix=f"s3://{moto_s3.bucket}/batch-in/",
        target_resolution="2k",
        output_format="png",
        output_path=f"s3://{moto_s3.bucket}/batch-out",
        poll_interval=0.1,
    ).execute({"ti": FakeTI()})
    assert summary["completed"] == 2
    assert sorted(
        line["input"]
        for line in json.loads(
            "["
            + ",".join(
                client.get_object(Bucket=moto_s3.bucket, Key=summary["manifest"].split("/", 3)[3])["Body"]
                .read()
                .decode()
                .splitlines()
            )
            + "]"
        )
    ) == [f"s3://{moto_s3.bucket}/batch-in/a.png", f"s3://{moto_s3.bucket}/batch-in/b.jpg"]


def test_rate_limiter_spaces_acquisitions() -> None:
    limiter = RateLimiter(per_minute=600)  # one every 0.1 s
    started = time.monotonic()
    for _ in range(4):
        limiter.acquire()
    assert time.monotonic() - started >= 0.3


def test_progress_lines_say_done_total_failed_and_elapsed(
    vibedream_conn: EmulatorServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    httpx.post(
        f"{vibedream_conn.base_url}/_emulator/faults",
        json={"rules": [{"route": "submit", "kind": "fail_prediction", "times": 1}]},
    ).raise_for_status()
    operator = batch(vibedream_conn, tmp_path, count=3, progress_interval=0.001, fail_on_error=False)
    operator.execute({"ti": FakeTI()})
    output = capsys.readouterr().out + caplog.text
    assert re.search(r"VibeDream batch: 3/3 done, 1 failed, \d+s elapsed", output), output[-2000:]
    assert "VibeDream batch cost estimate: 6 cents (3 images to submit x 2 cents" in output


def test_without_task_state_store_the_ids_cross_the_deferral_in_xcom(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    """Airflow < 3.3: the resumed task must still know which prediction belongs to which image."""
    import asyncio

    ti = FakeTI()
    operator = batch(vibedream_conn, tmp_path, deferrable=True)
    with pytest.raises(TaskDeferred) as info:
        operator.execute({"ti": ti})  # no task_state_store in the context, as below 3.3
    assert len(ti.xcom[XCOM_SUBMISSIONS]) == 5
    event = asyncio.run(fire(info.value.trigger))
    summary = operator.execute_complete({"ti": ti}, event)
    assert summary["completed"] == 5 and summary["total_cost_cents"] == 10
    assert emulator_stats(vibedream_conn.base_url)["accepted_submissions"] == 5


def test_why_an_image_was_not_submitted_crosses_the_deferral(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    """The manifest is written by ``execute_complete`` in another process: each image that was not
    submitted keeps its reason there (and whether a retry can help), not ``"error": null``."""
    import asyncio

    ti = FakeTI()
    images = [f"{vibedream_conn.base_url}/samples/100x80.png", f"{vibedream_conn.base_url}/samples/gone.png"]
    operator = batch(vibedream_conn, tmp_path, images=images, deferrable=True)
    with pytest.raises(TaskDeferred) as info:
        operator.execute({"ti": ti, "task_state_store": (store := FakeStateStore())})
    event = asyncio.run(fire(info.value.trigger))
    resumed = batch(vibedream_conn, tmp_path, images=images, deferrable=True)  # a new process's task
    with pytest.raises(AirflowException, match="1 of 2 images failed") as failed:
        resumed.execute_complete({"ti": ti, "task_state_store": store}, event)
    assert type(failed.value) is AirflowException  # an unreadable URL may be readable on a retry
    [manifest] = tmp_path.rglob("manifest.jsonl")
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert lines[0]["status"] == "completed"
    assert lines[1]["status"] == "skipped" and "404" in lines[1]["error"]
