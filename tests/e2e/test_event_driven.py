"""Upscale as images land, in a real Airflow: the example DAG ``example_vibedream_event_driven``
against a moto server (S3 + SQS). Uploads under ``incoming/`` send object-created events to the SQS
queue; the example's AssetWatcher turns each into an asset event; each asset event runs the DAG.
Three uploads (one after another) give three runs, three outputs, three jobs: nothing twice. Then
at-least-once delivery: the same event delivered twice more, and one image uploaded again with
the same bytes, start runs that cost nothing (the ledger beside the outputs)."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_vibedream.emulator.imaging import sample_image
from airflow_vibedream.emulator.process import EmulatorProcess
from tests.conftest import MotoS3, connection_json, emulator_stats
from tests.e2e.cluster import AirflowCluster, wait_for
from tests.e2e.services import deferral_safe_emulator

pytestmark = pytest.mark.e2e

DAG_ID = "example_vibedream_event_driven"
EXAMPLE = Path(__file__).resolve().parents[2] / "example_dags" / f"{DAG_ID}.py"
BUCKET = "landing"
QUEUE = "vibedream-uploads"


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("event_driven")


def sqs_of(server: MotoS3) -> Any:
    import boto3

    return boto3.client(
        "sqs",
        endpoint_url=server.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture(scope="module")
def aws() -> Iterator[tuple[MotoS3, str]]:
    """moto in server mode: the bucket sends object-created events under incoming/ to the queue."""
    server = MotoS3().start()
    sqs_client = sqs_of(server)
    queue_url = sqs_client.create_queue(QueueName=QUEUE)["QueueUrl"]
    arn = sqs_client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3 = server.client()
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}},
                }
            ]
        },
    )
    # Configuring notifications makes S3 send one s3:TestEvent message. Consumed here, as the person
    # setting the queue up would see it; left in, it would start one run that upscales nothing.
    test_event = sqs_client.receive_message(QueueUrl=queue_url, WaitTimeSeconds=5)["Messages"]
    assert len(test_event) == 1 and "s3:TestEvent" in test_event[0]["Body"]
    sqs_client.delete_message(QueueUrl=queue_url, ReceiptHandle=test_event[0]["ReceiptHandle"])
    try:
        yield server, queue_url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def emulator(module_tmp: Path) -> Iterator[EmulatorProcess]:
    with deferral_safe_emulator(module_tmp) as process:
        yield process


@pytest.fixture(scope="module")
def cluster(module_tmp: Path, aws: tuple[MotoS3, str], emulator: EmulatorProcess) -> Iterator[AirflowCluster]:
    server, queue_url = aws
    dags = module_tmp / "dags"
    dags.mkdir()
    shutil.copy(EXAMPLE, dags)
    airflow = AirflowCluster(
        module_tmp / "airflow",
        dags,
        env={
            "AIRFLOW_CONN_VIBEDREAM_DEFAULT": connection_json(emulator.base_url),
            "AIRFLOW_CONN_AWS_DEFAULT": server.connection_json(),
            "VIBEDREAM_EXAMPLE_SQS_QUEUE": queue_url,
            "VIBEDREAM_EXAMPLE_OUTPUT": f"s3://{BUCKET}/upscaled/",
        },
    )
    try:
        airflow.start_all()
        airflow.wait_for_dag(DAG_ID)
        yield airflow
    finally:
        airflow.stop()


def runs(cluster: AirflowCluster) -> list[dict[str, Any]]:
    return list(cluster.api("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 100}).json()["dag_runs"])


def queue_depth(server: MotoS3, queue_url: str) -> int:
    attributes = sqs_of(server).get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def test_three_uploads_three_runs_three_outputs(
    cluster: AirflowCluster, aws: tuple[MotoS3, str], emulator: EmulatorProcess
) -> None:
    server, queue_url = aws
    s3 = server.client()
    uploaded = []
    for number in range(1, 4):
        key = f"incoming/photo {number}.png"  # a space: S3 sends the key URL-encoded
        s3.put_object(Bucket=BUCKET, Key=key, Body=sample_image(160 + number * 16, 120, "PNG"))
        uploaded.append(key)
        wait_for(
            lambda n=number: (
                len(found := runs(cluster)) >= n
                and all(run["state"] in ("success", "failed") for run in found)
            ),
            timeout=180,
            what=f"the run for upload {number}",
        )
    finished = runs(cluster)
    assert [run["state"] for run in finished] == ["success"] * 3, finished
    assert all(run["run_type"] == "asset_triggered" for run in finished)
    for run in finished:  # one object per run, one mapped upscale
        assert len(cluster.task_instances(DAG_ID, run["dag_run_id"], "upscale")) == 1
    outputs = sorted(
        item["Key"]
        for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="upscaled/").get("Contents", [])
        if "/_vibedream_ledger/" not in item["Key"]
    )
    assert len(outputs) == 3, outputs
    for key in outputs:
        image = Image.open(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
        assert max(image.size) == 2048
    assert emulator_stats(emulator.base_url)["accepted_submissions"] == 3
    assert queue_depth(server, queue_url) == 0  # every message consumed, none left to replay


def test_a_duplicate_event_or_an_identical_upload_costs_nothing(
    cluster: AirflowCluster, aws: tuple[MotoS3, str], emulator: EmulatorProcess
) -> None:
    server, queue_url = aws
    jobs_before = emulator_stats(emulator.base_url)["accepted_submissions"]
    runs_before = len(runs(cluster))
    # The event of "photo 1" delivered again, twice (as SQS may), as S3 wrote it.
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": BUCKET}, "object": {"key": "incoming/photo+1.png"}},
            }
        ]
    }
    for _ in range(2):
        sqs_of(server).send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))
    wait_for(
        lambda: (
            len(found := runs(cluster)) > runs_before
            and all(run["state"] in ("success", "failed") for run in found)
            and queue_depth(server, queue_url) == 0
        ),
        timeout=180,
        what="the runs of the duplicate events",
    )
    # "photo 2" uploaded again with the same bytes.
    s3 = server.client()
    same = s3.get_object(Bucket=BUCKET, Key="incoming/photo 2.png")["Body"].read()
    runs_before = len(runs(cluster))
    s3.put_object(Bucket=BUCKET, Key="incoming/photo 2.png", Body=same)
    wait_for(
        lambda: (
            len(found := runs(cluster)) > runs_before
            and all(run["state"] in ("success", "failed") for run in found)
        ),
        timeout=180,
        what="the run of the identical upload",
    )
    finished = runs(cluster)
    assert {run["state"] for run in finished} == {"success"}, finished
    assert emulator_stats(emulator.base_url)["accepted_submissions"] == jobs_before
    reused = [cluster.xcom_mapped(DAG_ID, run["dag_run_id"], "upscale", 0) for run in finished[3:]]
    assert reused and all(result["reused"] is True and result["cost_cents"] == 0 for result in reused)
