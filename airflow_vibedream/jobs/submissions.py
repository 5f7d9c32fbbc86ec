"""Where submissions are recorded: Airflow's ``task_state_store`` (3.3+), which outlives the try.

Below 3.3 there is no such store; a record can then only cross a deferral of the same try, in an
XCom that :meth:`SubmissionStore.hand_over` writes before deferring.

Both can be written by others: Airflow's REST API lets a UI "user" account write a task's state
store and its XComs. A record decides which job a later try adopts, so each is signed
(:mod:`.signing`) together with the task instance it belongs to (DAG, run, task, map index): one
whose MAC does not verify, or a genuine record copied from another task instance (whose job was
made from whatever that task's input was then), is no record at all.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_vibedream.jobs.signing import RecordSigner

log = logging.getLogger(__name__)

#: The field of a record that names the task instance it was written by (and for).
OWNER_FIELD = "task_instance"

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: Record states. ``intent``: written before the POST (a try killed while its submit is in flight
#: leaves it behind); ``unknown``: the submit was sent but its answer was lost or unreadable. In
#: both the job may exist (and be billed): it is never sent again automatically.
INTENT = "intent"
SUBMITTED = "submitted"
UNKNOWN = "unknown"
#: No job: the image was not submitted, for ``error``'s reason. ``refused``: a retry may send it;
#: ``skipped``: no retry can (a refused or known-bad input). They carry the reason across a deferral,
#: and are never adopted: a retry looks at the image again.
REFUSED = "refused"
SKIPPED = "skipped"
#: No job: the input is already at or above the target's size and is resized locally instead.
LOCAL = "local"
#: The states read back as they are (any other is ``submitted``).
NO_JOB_STATES = (INTENT, UNKNOWN, REFUSED, SKIPPED, LOCAL)


@dataclass(frozen=True)
class SubmissionRecord:
    """One submission as recorded.

    :param fingerprint: the fingerprint of what was asked (see :class:`.fingerprint.JobSpec`).
    :param asked: what was asked, as the user named it (small; for the "input changed" log line).
    :param prediction_id: the id the API returned (None when the state is unknown).
    :param cost_cents: the submit answer's cost (poll answers do not repeat it).
    :param state: ``intent``, ``submitted``, ``unknown``, ``refused``, ``skipped`` or ``local``.
    :param error: why the state is unknown, or why the image was not submitted.
    :param ledger_key: the image's ledger key, when the ledger is used (see :mod:`.ledger`).
    :param identity: the input's content identity the key was made from.
    """

    fingerprint: str
    asked: dict[str, Any]
    prediction_id: str | None
    cost_cents: int | None = None
    state: str = SUBMITTED
    error: str | None = None
    ledger_key: str | None = None
    identity: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        value = {
            "fingerprint": self.fingerprint,
            "asked": self.asked,
            "prediction_id": self.prediction_id,
            "cost_cents": self.cost_cents,
            "state": self.state,
            "error": self.error,
        }
        if self.ledger_key:
            value.update(ledger_key=self.ledger_key, identity=self.identity)
        return value

    @classmethod
    def from_json(cls, value: Any) -> SubmissionRecord | None:
        """A record, or None for anything else (including an older provider's record with no
        fingerprint: it cannot prove it was made for this input)."""
        if not isinstance(value, dict) or not isinstance(value.get("fingerprint"), str):
            return None
        cost = value.get("cost_cents")
        prediction_id = value.get("prediction_id")
        return cls(
            fingerprint=value["fingerprint"],
            asked=dict(value.get("asked") or {}),
            prediction_id=prediction_id if isinstance(prediction_id, str) else None,
            cost_cents=cost if isinstance(cost, int) and not isinstance(cost, bool) else None,
            state=value["state"] if value.get("state") in NO_JOB_STATES else SUBMITTED,
            error=value.get("error") if isinstance(value.get("error"), str) else None,
            ledger_key=value.get("ledger_key") if isinstance(value.get("ledger_key"), str) else None,
            identity=dict(value["identity"]) if isinstance(value.get("identity"), dict) else None,
        )


@dataclass
class SubmissionStore:
    """The records of one task instance.

    :param context: the task's context.
    :param signer: signs what is written, checks what is read.
    :param handover_key: below 3.3, the XCom key records cross a deferral in (None: not at all).
    """

    context: Context
    signer: RecordSigner
    handover_key: str | None = None
    _memory: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._backend = self.context.get("task_state_store")  # type: ignore[attr-defined,unused-ignore]
        if self._backend is None and self.handover_key:
            ti = self.context["ti"]
            handed = ti.xcom_pull(task_ids=ti.task_id, key=self.handover_key, map_indexes=ti.map_index)
            self._memory = dict(handed) if isinstance(handed, dict) else {}

    @property
    def durable(self) -> bool:
        """True when records outlive the try (Airflow 3.3+)."""
        return self._backend is not None

    def warn_if_not_durable(self, log: logging.Logger | Any) -> None:
        if not self.durable:
            log.warning(
                "task_state_store is not available (Airflow < 3.3): a retry of this task cannot reconnect to "
                "its prediction and will submit a new one, so a try killed while its submit is in flight "
                "can pay twice. Set output_path: the ledger beside it records the intent before the submit"
            )

    @property
    def owner(self) -> str:
        """The task instance a record belongs to (signed with it)."""
        ti = self.context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return json.dumps([ti.dag_id, ti.run_id, ti.task_id, -1 if map_index is None else map_index])

    def get(self, key: str) -> SubmissionRecord | None:
        """The record under ``key`` if this deployment wrote it for this very task instance; else None."""
        raw = self._backend.get(key) if self._backend is not None else self._memory.get(key)
        if raw is None:
            return None
        verified = self.signer.verified(raw)
        if verified is None:
            log.warning(
                "VibeDream record %r of this task is not one this deployment signed (written through "
                "the REST API, or before a change of API key or record_secret): ignored",
                key,
            )
            return None
        if verified.get(OWNER_FIELD) != self.owner:
            log.warning(
                "VibeDream record %r was written for another task instance (copied here): ignored", key
            )
            return None
        return SubmissionRecord.from_json(verified)

    def set(self, key: str, record: SubmissionRecord) -> None:
        signed = self.signer.signed({**record.to_json(), OWNER_FIELD: self.owner})
        if self._backend is not None:
            self._backend.set(key, signed)
        else:
            self._memory[key] = signed

    def delete(self, key: str) -> None:
        """Withdraw a record (an intent whose submit surely made no job)."""
        if self._backend is not None:
            self._backend.delete(key)
        else:
            self._memory.pop(key, None)

    def hand_over(self) -> None:
        """Below 3.3, before deferring: push the records of this try for ``execute_complete``."""
        if self._backend is None and self.handover_key:
            self.context["ti"].xcom_push(key=self.handover_key, value=self._memory)
