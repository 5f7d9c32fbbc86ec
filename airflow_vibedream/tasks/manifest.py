"""The batch manifest: one JSON line per input image, where it is written, and what a line says
before any output is downloaded (a job never submitted, its state unknown, cut by the deadline, or
failed in the API)."""

from __future__ import annotations

from typing import Any

from airflow_vibedream.files.storage import safe_segment, storage_uri
from airflow_vibedream.jobs.submissions import REFUSED, SKIPPED, UNKNOWN, SubmissionRecord
from airflow_vibedream.waiting.decisions import FAILED, PENDING

#: Manifest statuses beyond the API's own (``completed``, ``failed``).
STATUS_UNKNOWN = "submission_state_unknown"
STATUS_TIMEOUT = "timeout"
#: Already upscaled from the same bytes with the same request (the ledger): nothing paid.
STATUS_REUSED = "reused"
#: A complete output that is not what was asked (format, size, aspect): never stored, never retried.
STATUS_INVALID_OUTPUT = "invalid_output"
#: Not sent, with the reason: its input is refused or known bad (the ledger), or it could not be
#: read or sent this time (``"retryable"``: a retry of the task may send it).
STATUS_SKIPPED = "skipped"
#: Already at or above the target's size: resized locally (Pillow), stored and verified, cost 0.
STATUS_RESIZED = "resized_locally"


def manifest_uri(output_path: str, dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    """``<output_path>/<dag>/<run>/<task>[/map_<i>]/manifest.jsonl``, each folder named by
    :func:`~airflow_vibedream.files.storage.safe_segment` as the outputs' are: two runs (or DAGs, or tasks)
    never write the same manifest, even when their ids differ only in characters a name cannot keep
    (``a:b`` and ``a/b``).

    :param output_path: the operator's ``output_path``.
    :param dag_id: the task instance's DAG.
    :param run_id: its run.
    :param task_id: its task.
    :param map_index: its map index (None or negative: not mapped).
    """
    map_suffix = f"/map_{map_index}" if map_index is not None and map_index >= 0 else ""
    return (
        f"{storage_uri(output_path).rstrip('/')}/{safe_segment(dag_id)}/{safe_segment(run_id)}/"
        f"{safe_segment(task_id)}{map_suffix}/manifest.jsonl"
    )


def line_before_download(
    image: str,
    record: SubmissionRecord | None,
    outcome: dict[str, tuple[str, str | None]],
    not_submitted_reason: str | None,
    permanent: bool = False,
) -> tuple[dict[str, Any], bool]:
    """(the line's fields so far, whether its outputs are still to be fetched). A line that a retry
    of the task could change says ``"retryable": True`` (the task drops the field from the manifest).

    :param permanent: the image was not submitted for a reason no retry can change."""
    base = {
        "input": image,
        "prediction_id": record.prediction_id if record else None,
        "cost_cents": record.cost_cents if record else None,
    }
    if record is not None and record.state in (REFUSED, SKIPPED):
        not_submitted_reason, permanent = record.error, record.state == SKIPPED
        record = None
        base.update(prediction_id=None, cost_cents=None)
    if record is None:
        return {
            **base,
            "status": STATUS_SKIPPED,
            "outputs": None,
            "error": not_submitted_reason or "not submitted (no reason recorded)",
            "retryable": not permanent,
        }, False
    if record.state == UNKNOWN or record.prediction_id is None:
        return {**base, "status": STATUS_UNKNOWN, "outputs": None, "error": record.error}, False
    state, error = outcome.get(record.prediction_id, ("", None))
    if state == PENDING:
        return {
            **base,
            "status": STATUS_TIMEOUT,
            "outputs": None,
            "error": "did not finish before the deadline",
            "retryable": True,
        }, False
    if state == FAILED:
        return {**base, "status": "failed", "outputs": None, "error": error}, False
    return base, True
