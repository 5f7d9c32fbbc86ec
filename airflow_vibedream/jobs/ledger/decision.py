"""The ledger's rule: what an image's entry means before its submit (reuse its outputs, reconnect to
its job, state unknown, a known-bad input, or a new submit), for single images and batches alike.
No I/O."""

from __future__ import annotations

from dataclasses import dataclass

from airflow_vibedream.jobs.ledger.documents import COMPLETED, FAILED, LedgerEntry, TaskRef

NEW = "new"
REUSE = "reuse"
RECONNECT = "reconnect"
UNKNOWN = "unknown"
KNOWN_BAD = "known_bad"


@dataclass(frozen=True)
class Decision:
    """What the ledger says about one image before its submit.

    :param kind: ``new`` (claim and submit), ``reuse`` (completed, outputs intact: nothing to pay),
        ``reconnect`` (a job exists: wait for it / fetch it), ``unknown`` (an intent with no id),
        ``known_bad`` (these bytes failed for good before: skip them at no cost).
    :param entry: the entry it was decided on (None for ``new`` with no entry).
    """

    kind: str
    entry: LedgerEntry | None = None


def decide(
    entry: LedgerEntry | None,
    me: TaskRef,
    *,
    reuse: bool,
    resubmit_unknown: bool,
    outputs_intact: bool,
    retry_failed: bool = False,
) -> Decision:
    """The ledger's rule, for single images and batches alike."""
    if entry is None:
        return Decision(NEW)
    if entry.state == FAILED:
        # Those bytes fail for a reason that does not change: paying again would buy the same failure
        # (whatever ``reuse`` says, a re-run gets nothing new from them), unless the user asks.
        return Decision(NEW if retry_failed else KNOWN_BAD, entry)
    own = entry.task.same_instance(me)  # a retry or a clear of the very task that wrote it
    if not (reuse or own):
        return Decision(NEW, entry)  # a deliberate re-run pays
    if entry.state == COMPLETED and outputs_intact:
        return Decision(REUSE, entry)
    if entry.prediction_id:
        return Decision(RECONNECT, entry)
    return Decision(NEW if resubmit_unknown else UNKNOWN, entry)


def unknown_message(entry: LedgerEntry, entry_uri: str) -> str:
    who = f"{entry.task.dag_id}/{entry.task.run_id}/{entry.task.task_id}"
    return (
        f"VibeDream submission state unknown for {entry.input}: {who} recorded its intent to submit at "
        f"{entry.updated_at} but never recorded a prediction id (killed while the submit was in flight, "
        "or its answer was lost). The job may exist and be billed, so it is NOT sent again. Check the "
        f"VibeDream dashboard; to submit it again, delete {entry_uri} or set resubmit_unknown=True"
    )


def known_bad_message(entry: LedgerEntry, entry_uri: str) -> str:
    who = f"{entry.task.dag_id}/{entry.task.run_id}/{entry.task.task_id}"
    return (
        f"known bad input, not sent (nothing paid): {entry.reason or 'failed for good'} (recorded by {who} "
        f"at {entry.updated_at}). To try it again, set retry_failed=True or delete {entry_uri}"
    )
