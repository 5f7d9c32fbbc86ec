"""The provider on a distributed Airflow: CeleryExecutor workers and triggerers on separate test hosts
(network namespaces), outputs in S3, no shared disk. Mapped deferrable upscales and one batch run at
once; one Celery worker is kill -9'ed while it holds tasks and one triggerer while it holds triggers.
Every task succeeds, each image is paid for once, every output in S3 is byte-identical to what the
emulator served, and the API key is in no log, no broker message and no database dump."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_vibedream.emulator.process import EmulatorProcess
from airflow_vibedream.files.storage import safe_segment
from tests.conftest import TEST_KEY
from tests.e2e.cluster import wait_for
from tests.e2e.distributed import S3_BUCKET, DistributedAirflow, distributed_airflow
from tests.e2e.test_crash_safety import copy_dags, files_containing

# Every mapped task is two Celery executions (submit, resume) of a few CPU seconds each: on a 2-core
# machine 200 mapped + 500 batched images took ~980 s (VIBEDREAM_DIST_MAPPED=200
# VIBEDREAM_DIST_BATCH=500), 48 + 200 ~340 s. The default proves the same in less: a worker killed
# while it holds >= 4 running tasks, a triggerer while it holds >= 4 deferred ones, a batch of 120.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

MAPPED = int(os.environ.get("VIBEDREAM_DIST_MAPPED", "32"))
BATCH = int(os.environ.get("VIBEDREAM_DIST_BATCH", "120"))


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, dags_folder: Path
) -> Iterator[tuple[DistributedAirflow, EmulatorProcess, str]]:
    # Hosts in network namespaces; without root, the loopback fallback (a warning says so); with
    # CI=true namespaces are required (test_hosts raises).
    root = tmp_path_factory.mktemp("distributed")
    dags = copy_dags(dags_folder, root / "dags", "vibedream_distributed.py")
    with distributed_airflow(root, dags) as running:
        yield running


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1"
    )


def broker_texts(airflow: DistributedAirflow) -> list[bytes]:
    """Every value in the broker now, message bodies base64-decoded too."""
    import redis

    client = redis.Redis.from_url(airflow.broker_url)
    texts: list[bytes] = []
    for key in client.scan_iter():
        kind = client.type(key)
        values: list[bytes] = []
        if kind == b"string":
            values = [client.get(key) or b""]
        elif kind == b"list":
            values = list(client.lrange(key, 0, -1))
        elif kind == b"hash":
            values = [v for pair in client.hgetall(key).items() for v in pair]
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = list(client.zrange(key, 0, -1))
        for value in values:
            texts.append(value)
            # kombu keeps a message's body base64-encoded inside its JSON envelope
            with contextlib.suppress(ValueError, KeyError, TypeError):
                texts.append(base64.b64decode(json.loads(value)["body"]))
    return texts


def print_unfinished_lines(s3_objects: Any, prefix: str) -> None:
    """Every manifest line below ``prefix`` (a key prefix, its folders named as the operators name
    them) that is not ``completed``."""
    listed = s3_objects.list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix)
    for item in listed.get("Contents", []):
        if item["Key"].endswith("manifest.jsonl"):
            body = s3_objects.get_object(Bucket=S3_BUCKET, Key=item["Key"])["Body"].read().decode()
            print(*(line for line in body.splitlines() if '"completed"' not in line), sep="\n")


def served_sha256(emulator: EmulatorProcess, prediction_id: str) -> list[str]:
    """The sha256 of each output the emulator serves for ``prediction_id`` (fetched over the bridge)."""
    prediction = httpx.get(
        f"{emulator.base_url}/api/v1/predictions/{prediction_id}",
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        timeout=30,
    ).json()
    return [hashlib.sha256(httpx.get(url, timeout=60).content).hexdigest() for url in prediction["outputs"]]


def test_mapped_and_batch_survive_a_killed_worker_and_a_killed_triggerer(
    deployment: tuple[DistributedAirflow, EmulatorProcess, str],
) -> None:
    airflow, emulator, s3 = deployment
    for dag_id in ("vibedream_distributed_mapped", "vibedream_distributed_batch"):
        airflow.wait_for_dag(dag_id, timeout=300)
    started = time.monotonic()
    mapped_run = airflow.trigger(
        "vibedream_distributed_mapped",
        {"base": emulator.base_url, "count": MAPPED, "output": f"s3://{S3_BUCKET}/mapped"},
    )
    images = [f"{emulator.base_url}/samples/{40 + i % 400}x{24 + i // 400}.png" for i in range(BATCH)]
    batch_run = airflow.trigger(
        "vibedream_distributed_batch", {"images": json.dumps(images), "output": f"s3://{S3_BUCKET}/batch"}
    )
    broker_during = broker_texts(airflow)

    # A worker dies while it holds tasks; a triggerer dies while it holds triggers.
    wait_for(
        lambda: (
            sum(
                ti["state"] == "running"
                for ti in airflow.task_instances("vibedream_distributed_mapped", mapped_run)
            )
            >= 4
        ),
        timeout=300,
        interval=0.5,
        what="mapped tasks running on the workers",
    )
    airflow.kill("worker-1", signal.SIGKILL)
    wait_for(
        lambda: (
            sum(
                ti["state"] == "deferred"
                for ti in airflow.task_instances("vibedream_distributed_mapped", mapped_run)
            )
            >= 4
        ),
        timeout=300,
        interval=0.5,
        what="deferred tasks on the triggerers",
    )
    airflow.kill("triggerer-1", signal.SIGKILL)

    assert airflow.wait_for_run("vibedream_distributed_mapped", mapped_run, timeout=1200) == "success"
    batch_state = airflow.wait_for_run("vibedream_distributed_batch", batch_run, timeout=1200)
    if batch_state != "success":  # the manifest says which image failed and why (the S3 server goes)
        print_unfinished_lines(
            s3_client(s3), f"batch/{safe_segment('vibedream_distributed_batch')}/{safe_segment(batch_run)}/"
        )
    assert batch_state == "success"
    wall = time.monotonic() - started
    mapped = [
        ti
        for ti in airflow.task_instances("vibedream_distributed_mapped", mapped_run)
        if ti["task_id"] == "upscale"
    ]
    assert len(mapped) == MAPPED and {ti["state"] for ti in mapped} == {"success"}
    retried = sum(ti["try_number"] > 1 for ti in mapped)
    counters = httpx.get(f"{emulator.base_url}/_emulator/stats").json()["counters"]
    assert counters["accepted_submissions"] == MAPPED + BATCH  # each image paid for once

    # Every output in S3 is byte-identical to what the emulator served.
    s3_objects = s3_client(s3)
    verified = 0
    for ti in mapped:
        result = airflow.xcom_mapped("vibedream_distributed_mapped", mapped_run, "upscale", ti["map_index"])
        [stored] = result["files"]
        key = stored["uri"].removeprefix(f"s3://{S3_BUCKET}/")
        body = s3_objects.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read()
        assert (
            hashlib.sha256(body).hexdigest() == stored["sha256"] == served_sha256(emulator, result["id"])[0]
        )
        verified += 1
    summary = airflow.xcom("vibedream_distributed_batch", batch_run, "batch")
    assert summary["completed"] == BATCH
    manifest_key = summary["manifest"].removeprefix(f"s3://{S3_BUCKET}/")
    lines = [
        json.loads(line)
        for line in s3_objects.get_object(Bucket=S3_BUCKET, Key=manifest_key)["Body"].read().splitlines()
    ]
    assert len(lines) == BATCH and {line["status"] for line in lines} == {"completed"}
    for line in lines:
        key = line["outputs"][0].removeprefix(f"s3://{S3_BUCKET}/")
        body = s3_objects.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == served_sha256(emulator, line["prediction_id"])[0]
        verified += 1

    # The key in no log, no broker message, no database dump.
    assert not [text for text in broker_during + broker_texts(airflow) if TEST_KEY.encode() in text]
    dump = subprocess.run(
        ["pg_dump", "--dbname", airflow.database_url.replace("+psycopg2", "")],
        capture_output=True,
        check=True,
    ).stdout
    assert b"vibedream_distributed_mapped" in dump and TEST_KEY.encode() not in dump
    assert files_containing(airflow.root, TEST_KEY.encode()) == []
    print(
        f"\ndistributed: {MAPPED} mapped tasks ({retried} retried after the worker kill) "
        f"+ 1 batch of {BATCH}: "
        f"all succeeded; jobs created {counters['accepted_submissions']} for {MAPPED + BATCH} images; "
        f"{verified} outputs verified byte-identical in S3; wall {wall:.0f} s"
    )
