"""One prediction's lifecycle: reconnect to the recorded job if it was made for this very input,
reuse what the ledger says was already upscaled from the same bytes, else claim the image in the
ledger, submit, and record the new id before anything else can happen."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.sync import VibeDreamClient
from airflow_vibedream.errors import (
    VibeDreamError,
    VibeDreamInputRefusedError,
    VibeDreamNotFoundError,
    VibeDreamSubmissionStateUnknownError,
)
from airflow_vibedream.files.downloads import first_gone_output
from airflow_vibedream.files.outputs import download_policy
from airflow_vibedream.jobs.fingerprint import JobSpec, what_changed
from airflow_vibedream.jobs.identity import ContentIdentity
from airflow_vibedream.jobs.ledger.decision import (
    KNOWN_BAD,
    NEW,
    RECONNECT,
    REUSE,
    decide,
    known_bad_message,
    unknown_message,
)
from airflow_vibedream.jobs.ledger.documents import (
    CLAIM_WAIT,
    COMPLETED,
    SUBMITTED,
    Ledger,
    LedgerEntry,
    TaskRef,
    new_entry,
)
from airflow_vibedream.jobs.signing import RecordSigner
from airflow_vibedream.jobs.submissions import INTENT, UNKNOWN, SubmissionRecord, SubmissionStore

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: The task_state_store key. Renaming it would make in-flight retries forget their prediction.
STATE_KEY = "vibedream_prediction"


@dataclass(frozen=True)
class LedgerUse:
    """How a task uses the ledger.

    :param ledger: the ledger beside the outputs.
    :param identity: reads the input's content identity (called only when the ledger is consulted).
    :param reuse: reuse another task's completed outputs (False: a deliberate re-run pays).
    :param resubmit_unknown: submit again an image whose earlier submit's outcome is unknown.
    :param retry_failed: submit again an input the ledger knows to be bad (its bytes failed for good).
    """

    ledger: Ledger
    identity: Callable[[], ContentIdentity]
    reuse: bool = True
    resubmit_unknown: bool = False
    retry_failed: bool = False


class SingleJob:
    """The submission of one task instance.

    :param context: the task's context (its ``task_state_store`` holds the record).
    :param log: the task's logger: every decision is written there.
    :param durable: record the submission and reconnect to it on a later try.
    :param signer: signs the task's record and checks it when read back.
    :param ledger: how the task uses the ledger (None: it does not).
    :param resubmit_unknown: without a ledger, submit again when an earlier try of this task left an
        intent with no id (killed while its submit was in flight); else that is *state unknown*.
    """

    def __init__(
        self,
        context: Context,
        log: logging.Logger | Any,
        *,
        durable: bool,
        signer: RecordSigner,
        ledger: LedgerUse | None = None,
        resubmit_unknown: bool = False,
    ) -> None:
        self.log = log
        self.durable = durable
        self.resubmit_unknown = resubmit_unknown
        self.store = SubmissionStore(context, signer)
        self.ledger = ledger
        self.task = TaskRef.of(context["ti"])
        #: The ledger entry of this try's job (None: no ledger, or not decided yet).
        self.entry: LedgerEntry | None = None
        self._rejected: set[str] = set()
        if durable and ledger is None:
            self.store.warn_if_not_durable(log)

    def start(
        self,
        client: VibeDreamClient,
        spec: JobSpec,
        payload: Callable[[], Mapping[str, Any]],
        *,
        wait_at_most: float | None = None,
    ) -> Prediction | LedgerEntry:
        """The recorded prediction if it can serve ``spec``; else, with a ledger, the completed entry
        to reuse or the job it records; else a new one (``payload`` is built only then: presigning
        an ``s3://`` input is not needed to reconnect)."""
        recorded = self.reconnect(client, spec)
        if self.ledger is None:
            return recorded or self.submit(client, spec, payload(), wait_at_most=wait_at_most)
        if recorded is not None:  # the fast path; the ledger's entry of that job is completed later
            intent = new_entry(spec.model_id, spec.asked, self.ledger.identity(), self.task)
            entry = self.ledger.ledger.read(intent.key)
            self.entry = entry if entry is not None and entry.prediction_id == recorded.id else None
            return recorded
        return self._through_ledger(self.ledger, client, spec, payload, wait_at_most)

    def _through_ledger(
        self,
        use: LedgerUse,
        client: VibeDreamClient,
        spec: JobSpec,
        payload: Callable[[], Mapping[str, Any]],
        wait_at_most: float | None,
    ) -> Prediction | LedgerEntry:
        intent = new_entry(spec.model_id, spec.asked, use.identity(), self.task)
        entry = use.ledger.read(intent.key)
        for _ in range(2):  # a second time only after losing a race for the claim
            outcome = self._decide(use, client, spec, entry)
            if outcome is not None:
                return outcome
            body = payload()  # an input the API would not accept is refused before the claim
            if entry is None:
                entry = use.ledger.claim(intent)
                if entry is not None:  # another task claimed it a moment ago: follow its job
                    self.log.info(
                        "VibeDream: %s is being submitted by another task; following it", spec.asked
                    )
                    entry = self._await_id(use.ledger, entry)
                    continue
            else:
                use.ledger.write(intent)  # ours now: the earlier job failed, is gone, or a re-run pays
            return self._submit_claimed(use.ledger, intent, client, spec, body, wait_at_most)
        raise AssertionError("unreachable: a lost claim is followed, never claimed twice")

    def _decide(
        self, use: LedgerUse, client: VibeDreamClient, spec: JobSpec, entry: LedgerEntry | None
    ) -> Prediction | LedgerEntry | None:
        """What the ledger's entry gives: the entry to reuse, the job to follow, or None (submit)."""
        intact = (
            entry is not None and entry.state == COMPLETED and use.ledger.outputs_intact([entry])[entry.key]
        )
        decision = decide(
            entry,
            self.task,
            reuse=use.reuse,
            resubmit_unknown=use.resubmit_unknown,
            outputs_intact=intact,
            retry_failed=use.retry_failed,
        )
        if decision.kind == KNOWN_BAD and entry is not None:
            raise VibeDreamInputRefusedError(
                f"VibeDream {entry.input}: {known_bad_message(entry, use.ledger.entry_uri(entry.key))}",
                field="image",
            )
        if decision.kind == REUSE and entry is not None:
            self.entry = entry
            self.log.info(
                "VibeDream: %s was already upscaled from the same bytes (prediction %s, by %s/%s): reusing "
                "its stored outputs, nothing paid",
                entry.input,
                entry.prediction_id,
                entry.task.dag_id,
                entry.task.run_id,
            )
            return entry
        if decision.kind == RECONNECT and entry is not None and entry.prediction_id:
            # Its cost is this task instance's only when one of its own tries made the job; following
            # another task's job pays nothing more.
            cost = entry.cost_cents if entry.task.same_instance(self.task) else 0
            prediction = self._adopt(client, entry.prediction_id, cost, "the ledger")
            if prediction is not None:
                self.entry = entry
                if self.durable:  # the fast path for this task's next try (Airflow 3.3+)
                    self.store.set(
                        STATE_KEY,
                        SubmissionRecord(spec.fingerprint, dict(spec.asked), prediction.id, cost),
                    )
                return prediction
            return None
        if decision.kind == NEW:
            return None
        assert entry is not None
        if entry.is_fresh_intent():  # being submitted by another task right now: follow it
            followed = self._await_id(use.ledger, entry)
            if followed.prediction_id:
                return self._decide(use, client, spec, followed)
        raise VibeDreamSubmissionStateUnknownError(unknown_message(entry, use.ledger.entry_uri(entry.key)))

    def _await_id(self, ledger: Ledger, entry: LedgerEntry) -> LedgerEntry:
        """Another task's fresh claim: wait (bounded) for it to record its job's id."""
        deadline = time.monotonic() + CLAIM_WAIT
        while not entry.prediction_id and time.monotonic() < deadline:
            time.sleep(0.5)
            entry = ledger.read(entry.key) or entry
        return entry

    def _submit_claimed(
        self,
        ledger: Ledger,
        intent: LedgerEntry,
        client: VibeDreamClient,
        spec: JobSpec,
        body: Mapping[str, Any],
        wait_at_most: float | None,
    ) -> Prediction:
        def journal(submitted: Prediction) -> None:
            self.entry = intent.moved_to(
                SUBMITTED, prediction_id=submitted.id, cost_cents=submitted.cost_cents
            )
            ledger.write(self.entry)

        try:
            return self.submit(client, spec, body, wait_at_most=wait_at_most, journal=journal)
        except VibeDreamSubmissionStateUnknownError:
            raise  # the intent stays: the job may exist, it is never sent again automatically
        except VibeDreamError:
            ledger.delete(intent.key)  # surely no job (refused, rate limited, never sent)
            raise

    def reconnect(self, client: VibeDreamClient, spec: JobSpec) -> Prediction | None:
        """The prediction an earlier try recorded, if it was made for this input and still serves."""
        record = self.store.get(STATE_KEY) if self.durable else None
        if record is None:
            return None
        if record.prediction_id is None:
            self._refuse_unknown(record, spec)
            return None
        if record.fingerprint != spec.fingerprint:
            self.log.warning(
                "VibeDream input changed since prediction %s was submitted (%s): submitting anew",
                record.prediction_id,
                what_changed(record.asked, spec.asked),
            )
            return None
        return self._adopt(client, record.prediction_id, record.cost_cents, "an earlier try")

    def _refuse_unknown(self, record: SubmissionRecord, spec: JobSpec) -> None:
        """An earlier try's intent (or lost answer) with no id, for this very ask: the job may exist and
        be billed, so it is not sent again unless the user said so."""
        if record.fingerprint != spec.fingerprint or record.state not in (INTENT, UNKNOWN):
            return  # another ask: nothing of it can be this one's job
        if self.resubmit_unknown:
            self.log.warning(
                "VibeDream: an earlier try of this task may have submitted this image already (%s); "
                "resubmit_unknown=True: submitting again",
                record.error or "killed while its submit was in flight",
            )
            return
        raise VibeDreamSubmissionStateUnknownError(
            "VibeDream submission state unknown: an earlier try of this task recorded its intent to submit "
            f"{spec.asked.get('image', 'this input')!r} but never a prediction id "
            f"({record.error or 'killed while its submit was in flight'}). The job may exist and be billed, "
            "so it is NOT sent again. Check the VibeDream dashboard; to submit it again, clear the task "
            "with resubmit_unknown=True (or set output_path: the ledger then also reuses what was paid)"
        )

    def _adopt(
        self, client: VibeDreamClient, prediction_id: str, cost_cents: int | None, source: str
    ) -> Prediction | None:
        """A recorded job, if it still serves (running, or succeeded with outputs still fetchable).
        A job found wanting is not asked about twice in one try (the store and the ledger may both
        name it)."""
        if prediction_id in self._rejected:
            return None
        self._rejected.add(prediction_id)  # until it proves it serves, below
        try:
            prediction = client.get_prediction(prediction_id).with_cost(cost_cents)
        except VibeDreamNotFoundError:
            self.log.warning(
                "Stored VibeDream prediction %s no longer exists: submitting anew", prediction_id
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
        self._rejected.discard(prediction_id)
        self.log.info(
            "Reconnected to VibeDream prediction %s from %s (status %s): not submitting again",
            prediction.id,
            source,
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
        journal: Callable[[Prediction], None] | None = None,
    ) -> Prediction:
        """Submit and record at once: from here on a crash of this try must not cost a second job.
        ``journal`` (the ledger) hears of the new id first, before the task's own state, whose write
        can fail (a task instance cleared meanwhile): the job exists and is billed either way.

        Without a ledger, on Airflow 3.3+ an intent is recorded before the POST and withdrawn only when
        the POST surely made no job. A submit whose outcome is unknown raises
        ``VibeDreamSubmissionStateUnknownError`` (permanent) and leaves the record ``unknown``: a later
        try says so too, and only ``resubmit_unknown=True`` sends it again.
        """
        # Without a ledger, the task's own store holds the intent (Airflow 3.3+): a try killed while
        # the POST is in flight leaves it, and the next try says "state unknown" instead of paying again.
        intent = self.durable and self.ledger is None and self.store.durable
        if intent:
            self.store.set(
                STATE_KEY, SubmissionRecord(spec.fingerprint, dict(spec.asked), None, state=INTENT)
            )
        try:
            # A sync-mode read is bounded by the operator's timeout, not only by the server's own wait.
            submitted = client.submit(spec.model_id, payload, wait_at_most=wait_at_most)
        except VibeDreamSubmissionStateUnknownError as exc:
            if intent:  # the job may exist: the intent stays, with why
                record = SubmissionRecord(
                    spec.fingerprint, dict(spec.asked), None, state=UNKNOWN, error=str(exc)
                )
                self.store.set(STATE_KEY, record)
            raise
        except VibeDreamError:
            if intent:
                self.store.delete(STATE_KEY)  # surely no job (refused, rate limited, never sent)
            raise
        if journal is not None:
            journal(submitted)
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
