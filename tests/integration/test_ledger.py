"""The ledger beside the outputs, driven through the operators against the emulator over real
HTTP: pay once per image across task instances, runs and DAGs; a deliberate re-run pays; an image
whose submit outcome is unknown is never resent unless asked."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from PIL import Image

from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.emulator.imaging import sample_image
from airflow_vibedream.errors import VibeDreamSubmissionStateUnknownError
from airflow_vibedream.files.outputs import download_policy
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.jobs.identity import identity_of
from airflow_vibedream.jobs.ledger.documents import LEDGER_DIR, Ledger, TaskRef, new_entry
from airflow_vibedream.jobs.signing import RecordSigner
from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from tests.conftest import TEST_KEY, MotoS3
from tests.helpers import FakeTI
from tests.integration.emulated import jobs, upscale

SIGNER = RecordSigner(TEST_KEY)  # as the operators sign: no record_secret, the API key

#: An intent written this long ago is not another task's submit in progress: its state is unknown.
LONG_AGO = "2026-01-01T00:00:00+00:00"


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
    # The file facts a downstream task reads are those of the paid result (pixel size, format, hash).
    keep = ("uri", "bytes", "sha256", "width", "height", "format")
    facts = [[{k: f[k] for k in keep} for f in result["files"]] for result in (first, second)]
    assert facts[0] == facts[1]


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
    ledger = Ledger(str(tmp_path), None, SIGNER)
    spec = task.job_spec()
    # What a task killed while its submit was in flight leaves behind.
    intent = new_entry(
        spec.model_id, spec.asked, identity_of(image, aws_conn_id=None, policy=policy), TaskRef.of(FakeTI())
    )
    assert ledger.claim(intent.model_copy(update={"updated_at": LONG_AGO})) is None
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


# -- batches over a growing S3 prefix (moto's server mode) -------------------------------------------


def put_images(s3: MotoS3, prefix: str, start: int, count: int, *, seed: int = 0) -> None:
    for i in range(start, start + count):
        data = sample_image(40 + i, 30 + seed, "PNG")
        s3.client().put_object(Bucket=s3.bucket, Key=f"{prefix}/in/img{i:03d}.png", Body=data)


def s3_batch(s3: MotoS3, prefix: str, **kwargs: Any) -> VibeDreamBatchUpscaleOperator:
    values: dict[str, Any] = {
        "task_id": "batch",
        "s3_prefix": f"s3://{s3.bucket}/{prefix}/in/",
        "target_resolution": "2k",
        "output_format": "jpeg",
        "output_path": f"s3://{s3.bucket}/{prefix}/out",
        "max_concurrency": 4,
        "poll_interval": 0.1,
        "deferrable": False,
        **kwargs,
    }
    return VibeDreamBatchUpscaleOperator(**values)


def s3_lines(s3: MotoS3, summary: dict[str, Any]) -> list[dict[str, Any]]:
    key = summary["manifest"].removeprefix(f"s3://{s3.bucket}/")
    body = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


def test_a_daily_batch_over_a_growing_prefix_pays_for_new_images_only(
    vibedream_conn: EmulatorServer, moto_s3: MotoS3
) -> None:
    prefix = "daily"
    put_images(moto_s3, prefix, 0, 4)
    day1 = run(s3_batch(moto_s3, prefix), "scheduled__day1")
    assert (day1["completed"], day1["reused"], jobs(vibedream_conn)) == (4, 0, 4)
    first_ids = {line["input"]: line["prediction_id"] for line in s3_lines(moto_s3, day1)}

    put_images(moto_s3, prefix, 4, 2)
    day2 = run(s3_batch(moto_s3, prefix), "scheduled__day2")
    assert (day2["completed"], day2["reused"], jobs(vibedream_conn)) == (2, 4, 6)
    lines = {line["input"]: line for line in s3_lines(moto_s3, day2)}
    for image, prediction_id in first_ids.items():
        assert lines[image]["status"] == "reused" and lines[image]["prediction_id"] == prediction_id
        assert lines[image]["cost_cents"] == 0 and lines[image]["outputs"]

    day3 = run(s3_batch(moto_s3, prefix), "scheduled__day3")
    assert (day3["reused"], day3["total_cost_cents"], jobs(vibedream_conn)) == (6, 0, 6)

    # Other bytes under the same name are a new image; the same bytes under another name are not.
    put_images(moto_s3, prefix, 0, 1, seed=7)
    moto_s3.client().copy_object(
        Bucket=moto_s3.bucket,
        Key=f"{prefix}/in/copy-of-img001.png",
        CopySource={"Bucket": moto_s3.bucket, "Key": f"{prefix}/in/img001.png"},
    )
    day4 = run(s3_batch(moto_s3, prefix), "scheduled__day4")
    assert (day4["completed"], day4["reused"], jobs(vibedream_conn)) == (1, 6, 7)

    # Another resolution is another output (the copy shares its original's job); a re-run that
    # asks to pay does.
    other = run(s3_batch(moto_s3, prefix, target_resolution="4k"), "scheduled__day5")
    assert (other["completed"], other["total_cost_cents"], jobs(vibedream_conn)) == (7, 12, 13)
    forced = run(s3_batch(moto_s3, prefix, reuse_outputs=False), "scheduled__day6")
    assert forced["completed"] == 7 and jobs(vibedream_conn) == 19


def test_a_batch_reuses_what_a_single_image_task_stored_and_lists_unknown_states(
    vibedream_conn: EmulatorServer, moto_s3: MotoS3
) -> None:
    prefix = "mixed"
    put_images(moto_s3, prefix, 0, 3)
    images = [f"s3://{moto_s3.bucket}/{prefix}/in/img{i:03d}.png" for i in range(3)]
    single = run(
        upscale(
            vibedream_conn,
            Path("unused"),
            image=images[0],
            output_format="jpeg",
            output_path=f"s3://{moto_s3.bucket}/{prefix}/out",
        ),
        "single_run",
    )
    assert jobs(vibedream_conn) == 1 and single["outputs"][0].startswith("s3://")
    # A task killed while the submit of images[1] was in flight left its intent and nothing else.
    task = s3_batch(moto_s3, prefix, images=images, s3_prefix=None)
    [item] = [i for i in task.batch_images() if i.image == images[1]]
    ledger = Ledger(f"s3://{moto_s3.bucket}/{prefix}/out", "aws_default", SIGNER)
    identity = identity_of(
        images[1], aws_conn_id="aws_default", policy=download_policy(VibeDreamHook().get_client().settings)
    )
    intent = new_entry(item.spec.model_id, item.spec.asked, identity, TaskRef.of(FakeTI()))
    assert ledger.claim(intent.model_copy(update={"updated_at": LONG_AGO})) is None

    with pytest.raises(AirflowFailException, match="Submission state unknown"):
        run(s3_batch(moto_s3, prefix, images=images, s3_prefix=None), "batch_run")
    assert jobs(vibedream_conn) == 2  # images[2] only
    statuses = {
        line["input"]: line["status"]
        for line in s3_lines(moto_s3, {"manifest": manifest_of(moto_s3, prefix, "batch_run")})
    }
    assert statuses == {images[0]: "reused", images[1]: "submission_state_unknown", images[2]: "completed"}

    again = run(s3_batch(moto_s3, prefix, images=images, s3_prefix=None, resubmit_unknown=True), "batch_run2")
    assert (again["reused"], again["completed"], jobs(vibedream_conn)) == (2, 1, 3)


def manifest_of(s3: MotoS3, prefix: str, run_id: str) -> str:
    return f"s3://{s3.bucket}/{prefix}/out/dag/{run_id}/upscale/manifest.jsonl"


def test_two_batches_racing_for_the_same_new_images_make_one_job_each(
    vibedream_conn: EmulatorServer, moto_s3: MotoS3
) -> None:
    prefix = "race"
    put_images(moto_s3, prefix, 0, 6)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda run_id: run(s3_batch(moto_s3, prefix), run_id), ["race_a", "race_b"]))
    assert jobs(vibedream_conn) == 6
    assert sum(r["completed"] for r in results) >= 6 and all(r["failed"] == 0 for r in results)


def test_a_retry_that_reconnects_through_task_state_store_completes_the_ledger_entry(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    from tests.helpers import FakeStateStore

    store = FakeStateStore()
    first = upscale(vibedream_conn, tmp_path).execute({"ti": FakeTI(), "task_state_store": store})
    ledger = Ledger(str(tmp_path), None, SIGNER)
    [entry] = entries(tmp_path)
    # As if the first try died after its submit: the entry never got its outputs.
    ledger.write(ledger.read(entry["key"]).model_copy(update={"state": "submitted", "outputs": []}))  # type: ignore[union-attr]
    again = upscale(vibedream_conn, tmp_path).execute({"ti": FakeTI(), "task_state_store": store})
    assert again["id"] == first["id"] and jobs(vibedream_conn) == 1
    [entry] = entries(tmp_path)
    assert entry["state"] == "completed" and entry["outputs"][0]["uri"] == again["outputs"][0]


def test_a_copy_of_an_image_another_task_claims_mid_batch_shares_that_tasks_job(
    vibedream_conn: EmulatorServer, moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = "copies"
    put_images(moto_s3, prefix, 0, 1)
    moto_s3.client().copy_object(
        Bucket=moto_s3.bucket,
        Key=f"{prefix}/in/copy.png",
        CopySource={"Bucket": moto_s3.bucket, "Key": f"{prefix}/in/img000.png"},
    )
    first = run(s3_batch(moto_s3, prefix), "first")
    assert (first["completed"], jobs(vibedream_conn)) == (2, 1)
    # The other task's claim lands between this batch's lookup and its own claim.
    monkeypatch.setattr(Ledger, "lookup", lambda self, keys: {})
    second = run(s3_batch(moto_s3, prefix), "second")
    assert jobs(vibedream_conn) == 1
    lines = s3_lines(moto_s3, second)
    assert len(lines) == 2 and {line["prediction_id"] for line in lines} == {first_id(moto_s3, first)}
    assert second["failed"] == 0 and second["total_cost_cents"] == 0


def first_id(s3: MotoS3, summary: dict[str, Any]) -> str:
    [prediction_id] = {line["prediction_id"] for line in s3_lines(s3, summary)}
    return prediction_id


def test_a_failed_write_of_the_tasks_state_after_the_post_leaves_the_id_in_the_ledger(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    """The task instance was cleared while its POST was out: Airflow refuses the write of its state.
    The job exists and is billed; the ledger heard of it first, so the next try reconnects to it."""
    from tests.helpers import FakeStateStore

    class Gone(FakeStateStore):
        def set(self, key: str, value: Any) -> None:
            raise RuntimeError("404 Task instance not found")

    with pytest.raises(Exception, match="404 Task instance not found"):
        upscale(vibedream_conn, tmp_path).execute({"ti": FakeTI(), "task_state_store": Gone()})
    [entry] = entries(tmp_path)
    assert entry["state"] == "submitted" and entry["prediction_id"]  # not withdrawn, not unknown
    again = run(upscale(vibedream_conn, tmp_path))
    assert jobs(vibedream_conn) == 1 and again["id"] == entry["prediction_id"]


# -- known-bad inputs: paid once, then skipped with their reason -------------------------------------


def lines_by_name(s3: MotoS3, prefix: str, run_id: str) -> dict[str, dict[str, Any]]:
    lines = s3_lines(s3, {"manifest": manifest_of(s3, prefix, run_id)})
    return {Path(line["input"]).name: line for line in lines}


def put_broken(s3: MotoS3, prefix: str) -> None:
    """One good image, one truncated PNG whose header reads fine (the API fails it as undecodable)."""
    put_images(s3, prefix, 0, 1)
    whole = sample_image(64, 48, "PNG", noise=True)
    s3.client().put_object(Bucket=s3.bucket, Key=f"{prefix}/in/truncated.png", Body=whole[: len(whole) // 2])


def test_a_truncated_input_is_paid_once_across_three_runs_then_retried_only_when_asked(
    vibedream_conn: EmulatorServer, moto_s3: MotoS3
) -> None:
    put_broken(moto_s3, "broken")
    with pytest.raises(AirflowFailException, match="no retry is made") as first:
        run(s3_batch(moto_s3, "broken"), "scheduled__1")
    assert jobs(vibedream_conn) == 2
    assert "1 of 2 images failed" in str(first.value)
    lines = lines_by_name(moto_s3, "broken", "scheduled__1")
    assert lines["truncated.png"]["status"] == "failed"
    assert "could not be decoded" in lines["truncated.png"]["error"]
    assert lines["truncated.png"]["cost_cents"] == 2

    for run_id in ("scheduled__2", "scheduled__3"):
        with pytest.raises(AirflowFailException, match="1 of 2 images failed"):
            run(s3_batch(moto_s3, "broken"), run_id)
        lines = lines_by_name(moto_s3, "broken", run_id)
        skipped = lines["truncated.png"]
        assert skipped["status"] == "skipped" and skipped["cost_cents"] is None
        assert "known bad input" in skipped["error"] and "could not be decoded" in skipped["error"]
        assert "retry_failed=True" in skipped["error"]
        assert lines["img000.png"]["status"] == "reused"
    quiet = run(s3_batch(moto_s3, "broken", fail_on_error=False), "scheduled__4")
    assert (quiet["skipped"], quiet["reused"], quiet["total_cost_cents"]) == (1, 1, 0)
    assert jobs(vibedream_conn) == 2  # four runs, one job for the broken image

    with pytest.raises(AirflowFailException):
        run(s3_batch(moto_s3, "broken", retry_failed=True), "manual__retry")
    assert jobs(vibedream_conn) == 3  # asked: sent again (and failed again, recorded again)


def test_a_batch_whose_only_failure_is_a_refused_input_ends_without_retries(
    vibedream_conn: EmulatorServer, moto_s3: MotoS3
) -> None:
    put_images(moto_s3, "tiff", 0, 1)
    tiff = io.BytesIO()
    Image.new("RGB", (40, 30)).save(tiff, "TIFF")
    moto_s3.client().put_object(
        Bucket=moto_s3.bucket, Key="tiff/in/scan.png", Body=tiff.getvalue()
    )  # a TIFF under an image name: listed, then refused by its header
    with pytest.raises(AirflowFailException, match="no retry is made"):
        run(s3_batch(moto_s3, "tiff"), "scheduled__1")
    assert jobs(vibedream_conn) == 1
    lines = lines_by_name(moto_s3, "tiff", "scheduled__1")
    assert lines["scan.png"]["status"] == "skipped" and "TIFF" in lines["scan.png"]["error"]
    # Recorded: the next run does not even read its header again, and says why.
    with pytest.raises(AirflowFailException):
        run(s3_batch(moto_s3, "tiff"), "scheduled__2")
    second = lines_by_name(moto_s3, "tiff", "scheduled__2")
    assert "known bad input" in second["scan.png"]["error"] and "TIFF" in second["scan.png"]["error"]
    assert jobs(vibedream_conn) == 1


def test_a_single_image_whose_job_failed_as_undecodable_is_not_paid_again(
    vibedream_conn: EmulatorServer, moto_s3: MotoS3, tmp_path: Path
) -> None:
    put_broken(moto_s3, "single")
    image = f"s3://{moto_s3.bucket}/single/in/truncated.png"
    with pytest.raises(AirflowFailException, match="could not be decoded"):
        run(upscale(vibedream_conn, tmp_path, image=image), "scheduled__1")
    [entry] = entries(tmp_path)
    assert entry["state"] == "failed" and "could not be decoded" in entry["reason"]
    with pytest.raises(AirflowFailException, match="known bad input, not sent") as second:
        run(upscale(vibedream_conn, tmp_path, image=image), "scheduled__2")
    assert "retry_failed=True" in str(second.value)
    assert jobs(vibedream_conn) == 1
    with pytest.raises(AirflowFailException, match="could not be decoded"):
        run(upscale(vibedream_conn, tmp_path, image=image, retry_failed=True), "scheduled__3")
    assert jobs(vibedream_conn) == 2
