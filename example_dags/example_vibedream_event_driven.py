"""Upscale images as they land: S3 sends each object-created event to an SQS queue, an Airflow
``AssetWatcher`` on that queue (the amazon provider's trigger, through common.messaging's
``MessageQueueTrigger``) turns each message into an asset event, and this DAG, scheduled on the
asset, upscales every new object into an output prefix.

Setup (once): an SQS queue, and the bucket's notification configuration sending
``s3:ObjectCreated:*`` (for the upload prefix) to it; install ``airflow-provider-vibedream[events]``.
Then point this DAG at them (environment of the scheduler, dag-processor, triggerer and workers):

    VIBEDREAM_EXAMPLE_SQS_QUEUE=https://sqs.eu-west-1.amazonaws.com/123456789012/uploads
    VIBEDREAM_EXAMPLE_OUTPUT=s3://my-bucket/upscaled/

Each image is paid for once, even though delivery is at-least-once: SQS may deliver a message
twice, a second watcher may see it, and an image may be uploaded again with the same bytes. The
ledger beside the outputs (``<output>/_vibedream_ledger/``) knows every image already upscaled from
the same bytes: such a task reuses the stored output (``"reused": true``, cost 0) instead of
submitting, and a retry reconnects to its own job. Several uploads that land before the scheduler
creates a run are handled by one run (one mapped task per object). Messages that name no new image
(S3 sends one ``s3:TestEvent`` when notifications are configured) start a run that upscales nothing.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from airflow.providers.common.compat.sdk import DAG, Asset, task
from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
from airflow.sdk import AssetWatcher

from airflow_vibedream.operators.vibedream import VibeDreamUpscaleImageOperator

QUEUE_URL = os.environ.get(
    "VIBEDREAM_EXAMPLE_SQS_QUEUE", "https://sqs.us-east-1.amazonaws.com/123456789012/vibedream-uploads"
)
OUTPUT_PREFIX = os.environ.get("VIBEDREAM_EXAMPLE_OUTPUT", "s3://my-bucket/upscaled/")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")

uploads = Asset(
    "vibedream_uploads",
    watchers=[
        AssetWatcher(
            name="vibedream_uploads_queue",
            trigger=MessageQueueTrigger(
                scheme="sqs", sqs_queue=QUEUE_URL, aws_conn_id="aws_default", waiter_delay=2
            ),
        )
    ],
)


def created_objects(message_body: str) -> list[str]:
    """The ``s3://`` images an S3 event notification names (none for S3's test event)."""
    try:
        body = json.loads(message_body)
    except ValueError:
        return []
    found = []
    for record in body.get("Records", []) if isinstance(body, dict) else []:
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        bucket = record["s3"]["bucket"]["name"]
        key = unquote_plus(record["s3"]["object"]["key"])  # S3 sends keys URL-encoded
        if key.lower().endswith(IMAGE_SUFFIXES):
            found.append(f"s3://{bucket}/{key}")
    return found


with DAG(
    dag_id="example_vibedream_event_driven",
    schedule=[uploads],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["example", "vibedream", "s3", "event-driven"],
) as dag:

    @task
    def new_images(triggering_asset_events: Any = None) -> list[str]:
        """Every image the run's asset events announce, once each."""
        images: list[str] = []
        for event in (triggering_asset_events or {}).get(uploads, []):
            for message in (event.extra or {}).get("payload", {}).get("message_batch", []):
                images += created_objects(message.get("Body", ""))
        return sorted(set(images))

    VibeDreamUpscaleImageOperator.partial(
        task_id="upscale",
        target_resolution="2k",
        output_format="png",
        output_path=OUTPUT_PREFIX,
        deferrable=True,
    ).expand(image=new_images())
