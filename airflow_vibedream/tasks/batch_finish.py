"""A batch's end: one manifest line per image (its outputs stored and checked now, or why not), the
ledger completed, the task's summary, and the decision to fail it (and whether a retry can help)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_vibedream.errors import InvalidOutputError, VibeDreamError
from airflow_vibedream.files.storage import copy_output, storage_uri
from airflow_vibedream.jobs.submissions import LOCAL
from airflow_vibedream.tasks.manifest import (
    STATUS_INVALID_OUTPUT,
    STATUS_RESIZED,
    STATUS_REUSED,
    STATUS_SKIPPED,
    STATUS_UNKNOWN,
    line_before_download,
)
from airflow_vibedream.tasks.rules import input_is_bad, is_permanent

if TYPE_CHECKING:
    from airflow_vibedream.client.sync import VibeDreamClient
    from airflow_vibedream.files.downloads import DownloadPolicy
    from airflow_vibedream.files.outputs import OutputTarget
    from airflow_vibedream.files.storage import StoredOutput
    from airflow_vibedream.files.verify import Expectation
    from airflow_vibedream.jobs.batch import BatchImage
    from airflow_vibedream.jobs.ledger.batch import BatchLedger
    from airflow_vibedream.jobs.ledger.documents import LedgerEntry
    from airflow_vibedream.jobs.submissions import SubmissionRecord


@dataclass
class ImageLines:
    """Each image's manifest line, its outputs stored on the way (threads call :meth:`line`).

    :param client: fetches each finished prediction (its outputs' URLs).
    :param target: where and under which names outputs are stored.
    :param ti: the task instance the outputs are named for.
    :param output_format: the format asked for.
    :param policy: how outputs are downloaded.
    :param expectation: what an image's output must be (checked before it is stored).
    :param records: each image's submission record, by request key.
    :param outcome: each prediction's ``(pending|done|failed, error)``.
    :param reused: images the ledger says are done, by request key.
    :param not_submitted: why an image was not submitted, by request key.
    :param permanent: images among ``not_submitted`` that no retry can help (a refused input, a
        known-bad one).
    :param log: the task's log.
    :param fixed_names: the dataset layout's output name of each image, by request key (empty: the
        name template's).
    """

    client: VibeDreamClient
    target: OutputTarget
    ti: Any
    output_format: str
    policy: DownloadPolicy
    expectation: Callable[[BatchImage], Expectation]
    records: dict[str, SubmissionRecord]
    outcome: dict[str, tuple[str, str | None]]
    reused: dict[str, LedgerEntry]
    not_submitted: dict[str, str]
    permanent: set[str]
    log: Any
    fixed_names: dict[str, str] = field(default_factory=dict)
    #: Each image's relative path (or file name), by request key: the name template's input fields.
    input_names: dict[str, str] = field(default_factory=dict)
    #: Resizes an image locally and stores it (the inputs already at or above the target's size).
    resize: Callable[[BatchImage, str | None], list[StoredOutput]] | None = None
    #: The outputs stored, by request key (for the ledger).
    stored_by_key: dict[str, list[StoredOutput]] = field(default_factory=dict)
    #: The first output's facts (``sha256``, ``width``, ``height``) of each image present, by key.
    facts_by_key: dict[str, dict[str, Any]] = field(default_factory=dict)

    def line(self, item: BatchImage) -> dict[str, Any]:
        """One image's manifest line: reused, decided before any download, or its outputs stored (and
        checked against what was asked) now. Never raises: one image's trouble is its line's."""
        if (reused := self.reused.get(item.key)) is not None:
            outputs = [out.uri for out in reused.outputs]
            if reused.outputs:
                self.facts_by_key[item.key] = reused.outputs[0].model_dump()
                outputs = self._in_place(item, outputs)
            return {
                "input": item.image,
                "prediction_id": reused.prediction_id,
                "status": STATUS_REUSED,
                "outputs": outputs,
                "error": None,
                "cost_cents": 0,
            }
        record = self.records.get(item.key)
        if record is not None and record.state == LOCAL:
            return self._resized(item)
        base, to_fetch = line_before_download(
            item.image, record, self.outcome, self.not_submitted.get(item.key), item.key in self.permanent
        )
        if not to_fetch or record is None or record.prediction_id is None:
            return base
        try:
            prediction = self.client.get_prediction(record.prediction_id)
            if not prediction.succeeded:
                return {**base, "status": prediction.status, "outputs": None, "error": prediction.error}
            stored = self.target.store(
                prediction,
                self.ti,
                self.output_format,
                self.policy,
                self.expectation(item),
                fixed_name=self.fixed_names.get(item.key),
                input_name=self.input_names.get(item.key),
            )
            self.stored_by_key[item.key] = stored
            if stored:
                self.facts_by_key[item.key] = stored[0].to_dict()
            return {
                **base,
                "status": "completed",
                "outputs": [s.uri for s in stored],
                "error": None,
                "checks": list(stored[0].checks) if stored else [],
            }
        except InvalidOutputError as exc:  # complete but not what was asked: final, never stored
            return {**base, "status": STATUS_INVALID_OUTPUT, "outputs": None, "error": str(exc)}
        except Exception as exc:  # one image's trouble never costs the manifest of the others
            if not isinstance(exc, VibeDreamError):
                self.log.exception("VibeDream batch: storing the outputs of %s failed", item.image)
            return {
                **base,
                "status": "failed",
                "outputs": None,
                "error": str(exc) if isinstance(exc, VibeDreamError) else f"{type(exc).__name__}: {exc}",
                "retryable": not is_permanent(exc),  # e.g. a download cut short
            }

    def _resized(self, item: BatchImage) -> dict[str, Any]:
        """An input at or above the target's size: resized here, stored and verified, cost 0."""
        base = {"input": item.image, "prediction_id": None, "cost_cents": 0}
        try:
            assert self.resize is not None
            stored = self.resize(item, self.fixed_names.get(item.key))
        except Exception as exc:  # one image's trouble never costs the manifest of the others
            if not isinstance(exc, VibeDreamError):
                self.log.exception("VibeDream batch: resizing %s locally failed", item.image)
            return {
                **base,
                "status": "failed",
                "outputs": None,
                "error": f"resizing locally failed: {type(exc).__name__}: {exc}",
                "retryable": not is_permanent(exc),
            }
        if stored:
            self.facts_by_key[item.key] = stored[0].to_dict()
        return {
            **base,
            "status": STATUS_RESIZED,
            "outputs": [s.uri for s in stored],
            "error": None,
            "checks": list(stored[0].checks) if stored else [],
        }

    def _in_place(self, item: BatchImage, outputs: list[str]) -> list[str]:
        """The dataset layout: a reused image's output where its input's relative path says (copied
        there, nothing paid, when an earlier run stored it elsewhere)."""
        name = self.fixed_names.get(item.key)
        if name is None:
            return outputs
        wanted = f"{storage_uri(self.target.output_path).rstrip('/')}/{name}"
        if outputs[0] == wanted:
            return outputs
        try:
            placed = copy_output(
                outputs[0], wanted, conn_id=self.target.conn_id, root=self.target.output_path
            )
        except Exception as exc:  # it stays where it is: still reused, still listed in the manifest
            self.log.warning("VibeDream batch: %s could not be copied into the dataset: %s", outputs[0], exc)
            return outputs
        self.facts_by_key[item.key] = placed.to_dict()
        return [placed.uri, *outputs[1:]]


def complete_in_ledger(
    ledger: BatchLedger,
    unique: list[BatchImage],
    records: dict[str, SubmissionRecord],
    by_key: dict[str, dict[str, Any]],
    stored_by_key: dict[str, list[StoredOutput]],
) -> None:
    """The ledger after the outputs were stored: each stored image completed with its outputs; a job
    that failed because of its input's bytes recorded as a known-bad input (later runs skip it at no
    cost); any other job that failed for good forgotten, so the next run submits its image anew."""
    ledger.record_completed(
        [(item, records[item.key], stored_by_key[item.key]) for item in unique if item.key in stored_by_key]
    )
    failed = [
        (item, records[item.key], by_key[item.key].get("error") or "")
        for item in unique
        if item.key in records
        and by_key[item.key]["status"] == "failed"
        and not by_key[item.key].get("retryable")
    ]
    ledger.record_failed([one for one in failed if input_is_bad(one[2])])
    ledger.forget([record for _, record, error in failed if not input_is_bad(error)])


#: A prediction id in a reason: left out when reasons are grouped.
_PREDICTION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: Names shown per reason in the log.
NAMES_PER_REASON = 3


def reason_kind(image: str, error: str) -> str:
    """A line's reason without what names its image (the image, a prediction id), so images that
    failed for the same reason are counted together."""
    # A known-bad input's reason ends with who recorded it and where: the same reason for all of them.
    error = error.split(" (recorded by ", 1)[0]
    return _PREDICTION_ID.sub("<id>", error.replace(repr(image), "<image>").replace(image, "<image>"))


def say_reasons(lines: list[dict[str, Any]], log: Any) -> dict[str, int]:
    """One log line per distinct reason an image was not completed, with its count and a few
    names; returns the counts by reason."""
    groups: dict[str, list[str]] = {}
    for line in lines:
        if line.get("error"):
            groups.setdefault(f"{line['status']}: {reason_kind(line['input'], line['error'])}", []).append(
                line["input"]
            )
    for reason, images in sorted(groups.items(), key=lambda group: -len(group[1])):
        shown = ", ".join(images[:NAMES_PER_REASON]) + (", ..." if len(images) > NAMES_PER_REASON else "")
        log.warning("VibeDream batch: %d images %s (%s)", len(images), reason, shown)
    return {reason: len(images) for reason, images in groups.items()}


def summary_of(
    lines: list[dict[str, Any]], records: dict[str, SubmissionRecord], manifest: str
) -> dict[str, Any]:
    """The task's return value: counts by outcome, the cost of this batch's jobs, the manifest."""
    completed = sum(1 for item in lines if item["status"] == "completed")
    reused = sum(1 for item in lines if item["status"] == STATUS_REUSED)
    resized = sum(1 for item in lines if item["status"] == STATUS_RESIZED)
    return {
        "total": len(lines),
        "completed": completed,
        "reused": reused,
        "resized_locally": resized,
        "failed": len(lines) - completed - reused - resized,
        "skipped": sum(1 for item in lines if item["status"] == STATUS_SKIPPED),
        "unknown": sum(1 for item in lines if item["status"] == STATUS_UNKNOWN),
        "by_status": dict(Counter(item["status"] for item in lines)),
        "total_cost_cents": sum(r.cost_cents or 0 for r in records.values()),
        "manifest": manifest,
    }


def fail_for(summary: dict[str, Any], unknown: list[str], retryable: bool) -> None:
    """Fail the task for the failed images. Only a retry that can change something is allowed: images
    never submitted, or cut by the deadline, or lost to a transient error. Failed predictions and
    unknown states are final."""
    message = (
        f"{summary['failed']} of {summary['total']} images failed; see the manifest {summary['manifest']}"
    )
    if unknown:
        message += (
            ". Submission state unknown (sent, answer lost: they may exist and be billed; NOT "
            f"resubmitted, check your VibeDream dashboard): {', '.join(unknown)}"
        )
    if retryable:
        raise AirflowException(message)
    raise AirflowFailException(
        f"{message}. Every failure is final for its input (a refused or known-bad input, a failed job, "
        "an output that is not what was asked, a state unknown): no retry is made, a retry would change "
        "nothing"
    )
