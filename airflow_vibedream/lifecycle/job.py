"""One prediction's lifecycle: reconnect to the recorded job if it was made for this very input,
else submit and record the new id before anything else can happen."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.sync import VibeDreamClient
from airflow_vibedream.downloads import first_gone_output
from airflow_vibedream.errors import VibeDreamNotFoundError
from airflow_vibedream.lifecycle.fingerprint import JobSpec, what_changed
from airflow_vibedream.lifecycle.outputs import download_policy
from airflow_vibedream.lifecycle.store import SubmissionRecord, SubmissionStore

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: The task_state_store key. Renaming it would make in-flight retries forget their prediction.
STATE_KEY = "vibedream_prediction"


class SingleJob:
    """The submission of one task instance.

    :param context: the task's context (its ``task_state_store`` holds the record).
    :param log: the task's logger: every decision is written there.
    :param durable: record the submission and reconnect to it on a later try.
    """

    def __init__(self, context: Context, log: logging.Logger | Any, *, durable: bool) -> None:
        self.log = log
        self.durable = durable
        self.store = SubmissionStore(context)
        if durable:
            self.store.warn_if_not_durable(log)

    def start(
        self,
        client: VibeDreamClient,
        spec: JobSpec,
        payload: Callable[[], Mapping[str, Any]],
        *,
        wait_at_most: float | None = None,
    ) -> Prediction:
        """The recorded prediction if it can serve ``spec``, else a new one (``payload`` is built
        only then: presigning an ``s3://`` input is not needed to reconnect)."""
        return self.reconnect(client, spec) or self.submit(client, spec, payload(), wait_at_most=wait_at_most)

    def reconnect(self, client: VibeDreamClient, spec: JobSpec) -> Prediction | None:
        """The prediction an earlier try recorded, if it was made for this input and still serves."""
        record = self.store.get(STATE_KEY) if self.durable else None
        if record is None or record.prediction_id is None:
            return None
        if record.fingerprint != spec.fingerprint:
            self.log.warning(
                "VibeDream input changed since prediction %s was submitted (%s): submitting anew",
                record.prediction_id,
                what_changed(record.asked, spec.asked),
            )
            return None
        try:
            prediction = client.get_prediction(record.prediction_id).with_cost(record.cost_cents)
        except VibeDreamNotFoundError:
            self.log.warning(
                "Stored VibeDream prediction %s no longer exists: submitting anew", record.prediction_id
            )
            return None
        if prediction.failed:
            self.log.warning(
                "Stored VibeDream prediction %s failed (%s): submitting anew", prediction.id, prediction.error
            )
            return None
        if prediction.succeeded and (
            gone := first_gone_output(prediction.outputs, policy=download_policy(client.settings))
        ):
            self.log.warning(
                "Outputs of stored VibeDream prediction %s can no longer be fetched (%s answered HTTP %d): "
                "submitting anew",
                prediction.id,
                gone[0],
                gone[1],
            )
            return None
        self.log.info(
            "Reconnected to VibeDream prediction %s from an earlier try (status %s): not submitting again",
            prediction.id,
            prediction.status,
        )
        return prediction

    def submit(
        self,
        client: VibeDreamClient,
        spec: JobSpec,
        payload: Mapping[str, Any],
        *,
        wait_at_most: float | None = None,
    ) -> Prediction:
        """Submit and record at once: from here on a crash of this try must not cost a second job.

        A submit whose outcome is unknown raises ``VibeDreamSubmissionStateUnknownError`` (permanent):
        it is not recorded, so only a person (a clear, after checking the dashboard) sends it again.
        """
        # A sync-mode read is bounded by the operator's timeout, not only by the server's own wait.
        submitted = client.submit(spec.model_id, payload, wait_at_most=wait_at_most)
        if self.durable:
            self.store.set(
                STATE_KEY,
                SubmissionRecord(spec.fingerprint, dict(spec.asked), submitted.id, submitted.cost_cents),
            )
        self.log.info(
            "Submitted VibeDream prediction %s to model %s (cost %s cents)",
            submitted.id,
            spec.model_id,
            submitted.cost_cents,
        )
        return submitted
