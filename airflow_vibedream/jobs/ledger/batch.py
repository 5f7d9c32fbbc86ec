"""The ledger as a batch uses it: identify every image, sort them with a few listings (reused,
following a known job, unknown, to submit), claim each group of submits at once before its POSTs,
journal the ids as they return, and record the completed images in one page."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.files.storage import StoredOutput
from airflow_vibedream.jobs.batch import BatchImage, BatchSubmitter, SubmitResult
from airflow_vibedream.jobs.identity import ContentIdentity, decisive_ask, ledger_key
from airflow_vibedream.jobs.ledger.decision import (
    KNOWN_BAD,
    RECONNECT,
    REUSE,
    UNKNOWN,
    decide,
    known_bad_message,
    unknown_message,
)
from airflow_vibedream.jobs.ledger.documents import (
    CLAIM_WAIT,
    COMPLETED,
    FAILED,
    LOOKUP_THREADS,
    GroupJournal,
    Ledger,
    LedgerEntry,
    TaskRef,
    new_entry,
)
from airflow_vibedream.jobs.submissions import UNKNOWN as RECORD_UNKNOWN
from airflow_vibedream.jobs.submissions import SubmissionRecord

#: Images claimed (and then submitted) as one group: one listing-friendly burst of intents.
GROUP_SIZE = 64


@dataclass
class Sorted:
    """A batch's images as the ledger sorts them.

    :param reused: completed elsewhere with intact outputs, by image key: nothing to pay.
    :param records: a job to follow, or an unknown state, by image key.
    :param todo: to claim and submit.
    :param errors: images that could not be identified, by image key (not submitted).
    :param held: images another task claimed moments ago, to follow (see :meth:`BatchLedger.follow`).
    :param known_bad: images whose bytes failed for good before, with the reason: skipped, unpaid.
    """

    reused: dict[str, LedgerEntry] = field(default_factory=dict)
    records: dict[str, SubmissionRecord] = field(default_factory=dict)
    todo: list[BatchImage] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    held: dict[str, tuple[BatchImage, LedgerEntry]] = field(default_factory=dict)
    known_bad: dict[str, str] = field(default_factory=dict)


class BatchLedger:
    """A batch's use of the ledger.

    :param ledger: the ledger beside the batch's outputs.
    :param task: the batch's task instance.
    :param log: the task's logger.
    :param reuse: reuse completed images (False: a deliberate re-run pays).
    :param resubmit_unknown: submit again images whose earlier submit's outcome is unknown.
    :param retry_failed: submit again images the ledger knows to be bad (their bytes failed for good).
    """

    def __init__(
        self,
        ledger: Ledger,
        task: TaskRef,
        log: logging.Logger | Any,
        *,
        reuse: bool,
        resubmit_unknown: bool,
        retry_failed: bool = False,
    ) -> None:
        self.ledger = ledger
        self.task = task
        self.log = log
        self.reuse = reuse
        self.resubmit_unknown = resubmit_unknown
        self.retry_failed = retry_failed
        self.journal = GroupJournal(ledger, task)
        #: Images whose entry exists but is to be replaced (their earlier job failed, or a re-run pays).
        self._replace: set[str] = set()
        #: Images another task claimed while this one was claiming, to follow.
        self._held: dict[str, tuple[BatchImage, LedgerEntry]] = {}
        #: Images that share their bytes with an earlier one of the batch (image key -> that one's key).
        self._followers: dict[str, str] = {}

    # -- identify and sort -------------------------------------------------------------------------

    def identify(
        self,
        items: list[BatchImage],
        known: dict[str, ContentIdentity],
        identity_of: Callable[[str], ContentIdentity],
    ) -> tuple[list[BatchImage], dict[str, str]]:
        """Each image with its identity and ledger key: from the prefix listing when known, else
        read (in parallel). An image that cannot be read is not submitted, with the reason."""

        def one(item: BatchImage) -> BatchImage | str:
            try:
                identity = known.get(item.image) or identity_of(item.image)
            except Exception as exc:
                return str(exc)
            return replace(
                item, identity=identity, ledger_key=ledger_key(item.spec.model_id, item.spec.asked, identity)
            )

        with ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="vibedream-identify") as pool:
            answers = list(pool.map(one, items))
        errors = {
            item.key: answer for item, answer in zip(items, answers, strict=True) if isinstance(answer, str)
        }
        return [answer for answer in answers if isinstance(answer, BatchImage)], errors

    def sort(self, items: list[BatchImage], *, say: bool = True) -> Sorted:
        """Decide every image with one lookup (listings and the completed pages).

        :param say: log the tally (a resumed task, which submits nothing, only looks the reused up)."""
        found = self.ledger.lookup(item.ledger_key for item in items if item.ledger_key)
        intact = self.ledger.outputs_intact(found.values())
        result = Sorted()
        for item in items:
            assert item.ledger_key is not None
            entry = found.get(item.ledger_key)
            decision = decide(
                entry,
                self.task,
                reuse=self.reuse,
                resubmit_unknown=self.resubmit_unknown,
                outputs_intact=intact.get(item.ledger_key, False),
                retry_failed=self.retry_failed,
            )
            if decision.kind == REUSE and entry is not None:
                result.reused[item.key] = entry
            elif decision.kind == KNOWN_BAD and entry is not None:
                result.known_bad[item.key] = known_bad_message(entry, self.ledger.entry_uri(entry.key))
            elif decision.kind == RECONNECT and entry is not None:
                # Its cost is this task instance's only when one of its own tries made the job.
                cost = entry.cost_cents if entry.task.same_instance(self.task) else 0
                result.records[item.key] = item.record(entry.prediction_id, cost)
            elif decision.kind == UNKNOWN and entry is not None and entry.is_fresh_intent():
                result.held[item.key] = (item, entry)  # being submitted elsewhere right now: follow it
            elif decision.kind == UNKNOWN and entry is not None:
                result.records[item.key] = item.record(
                    None, state=RECORD_UNKNOWN, error=unknown_message(entry, self.ledger.entry_uri(entry.key))
                )
            else:
                if entry is not None:
                    self._replace.add(item.ledger_key)
                result.todo.append(item)
        if not say:
            return result
        self.log.info(
            "VibeDream ledger %s: %d images reused (nothing to pay), %d follow a recorded job, %d with "
            "submission state unknown, %d known bad (skipped: retry_failed=True sends them), %d to submit",
            self.ledger.root_uri,
            len(result.reused),
            sum(1 for r in result.records.values() if r.prediction_id),
            sum(1 for r in result.records.values() if not r.prediction_id),
            len(result.known_bad),
            len(result.todo),
        )
        return result

    # -- claim, journal, withdraw ------------------------------------------------------------------

    def claim(
        self, group: list[BatchImage]
    ) -> tuple[list[BatchImage], dict[str, tuple[BatchImage, LedgerEntry]]]:
        """Write the intents of a group of submits at once, before any of its POSTs. Returns the
        images this task claimed, and those another task claimed first (settled by :meth:`follow`
        once this task's own submits are out, so that two batches never wait on each other)."""
        intents = {
            item.key: new_entry(
                item.spec.model_id, item.spec.asked, item.identity, self.task, group=self.journal.name
            )
            for item in group
            if item.identity
        }
        self.ledger.write_many([intent for key, intent in intents.items() if intent.key in self._replace])
        fresh = [intent for intent in intents.values() if intent.key not in self._replace]
        held = {key: other for key, other in self.ledger.claim_many(fresh).items() if other is not None}
        if held:
            self.log.info("VibeDream ledger: %d images were claimed by another task a moment ago", len(held))
        claimed = [item for item in group if item.ledger_key not in held]
        return claimed, {item.key: (item, held[item.ledger_key]) for item in group if item.ledger_key in held}

    def follow(self, held: dict[str, tuple[BatchImage, LedgerEntry]]) -> dict[str, SubmissionRecord]:
        """Records for the images another task claimed (found so by :meth:`sort`, ``held``, or
        while claiming): its job once it records the id (waiting a bounded time), else an unknown
        state."""
        held = {**held, **self._held}
        entries = self._await_ids({key: entry for key, (_, entry) in held.items()})
        records = {}
        for key, (item, _) in held.items():
            other = entries[key]
            if other.prediction_id:
                records[key] = item.record(other.prediction_id, 0)  # its cost is the other task's
            else:
                records[key] = item.record(
                    None, state=RECORD_UNKNOWN, error=unknown_message(other, self.ledger.entry_uri(other.key))
                )
        # Same bytes as an image another task holds: that image's job, shared too.
        for key, leader in self._followers.items():
            if leader in records:
                records[key] = replace(records[leader], cost_cents=0)
        return records

    def _await_ids(self, held: dict[str, LedgerEntry]) -> dict[str, LedgerEntry]:
        """Another task's fresh claims: wait (bounded) for it to record their jobs' ids."""
        deadline = time.monotonic() + CLAIM_WAIT
        while any(not entry.prediction_id for entry in held.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
            held = {
                key: (self.ledger.read(entry.key) or entry) if not entry.prediction_id else entry
                for key, entry in held.items()
            }
        return held

    def submit(self, todo: list[BatchImage], submitter: BatchSubmitter) -> SubmitResult:
        """Submit ``todo`` a group at a time: the group's intents at once, then its POSTs, the ids
        journalled as they return. The same bytes under several names in one batch make one job,
        shared (its cost counted once, on the first image's line)."""
        leaders = {item.ledger_key: item for item in reversed(todo)}
        unique = [item for item in todo if leaders[item.ledger_key] is item]
        done = SubmitResult({}, {})
        for start in range(0, len(unique), GROUP_SIZE):
            claimed, held = self.claim(unique[start : start + GROUP_SIZE])
            self._held.update(held)
            try:
                result = submitter.submit_all(claimed)
            except BaseException:
                # Interrupted: only the images surely never sent (or surely refused) are new again;
                # those in flight keep their intent (state unknown), those with an id are journalled.
                # An image this try cannot account for keeps its intent too: unknown beats paid twice.
                sent = submitter.result
                self.settle_refused(claimed, sent)
                self.withdraw([item for item in claimed if item.key in sent.never_sent])
                raise
            finally:
                self.journal.flush()
            self.settle_refused(claimed, result)
            done.records.update(result.records)
            done.errors.update(result.errors)
            done.permanent.update(result.permanent)
            done.known_bad.update(result.known_bad)
        for item in todo:
            leader = leaders[item.ledger_key].key
            if item.key == leader:
                continue
            if leader in done.records:
                done.records[item.key] = replace(done.records[leader], cost_cents=0)
            elif leader in done.errors:
                done.errors[item.key] = done.errors[leader]
                if leader in done.permanent:
                    done.permanent.add(item.key)
            else:  # its leader was claimed by another task: resolved with it by :meth:`follow`
                self._followers[item.key] = leader
        return done

    def submitted(self, item: BatchImage, prediction: Prediction) -> None:
        if item.ledger_key:
            self.journal.add(item.ledger_key, prediction.id, prediction.cost_cents)

    def settle_refused(self, claimed: list[BatchImage], result: SubmitResult) -> None:
        """The intents of images whose submit made no job: a known-bad input's becomes its failure
        (later runs skip it, with the reason); any other's is withdrawn (the image is new again)."""
        refused = [item for item in claimed if item.key in result.errors]
        self.record_failed(
            [(item, None, result.errors[item.key]) for item in refused if item.key in result.known_bad]
        )
        self.withdraw([item for item in refused if item.key not in result.known_bad])

    def record_failed(self, failed: list[tuple[BatchImage, SubmissionRecord | None, str]]) -> None:
        """Known-bad inputs (each with its job's record, if it had one, and the reason), so that later
        runs skip them at no cost, saying why (see :func:`.ledger_decision.decide`)."""
        entries = []
        for item, record, reason in failed:
            # The image's key and identity: read this try (a refused submit), or recorded with its job.
            key = item.ledger_key or (record.ledger_key if record else None)
            identity = item.identity.to_json() if item.identity else (record.identity if record else None)
            if not (key and identity):
                continue
            entries.append(
                LedgerEntry(
                    key=key,
                    state=FAILED,
                    model_id=item.spec.model_id,
                    ask=decisive_ask(item.spec.asked),
                    input=item.image,
                    identity=identity,
                    prediction_id=record.prediction_id if record else None,
                    cost_cents=record.cost_cents if record else None,
                    reason=reason[:2000],
                    task=self.task,
                    updated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                )
            )
        if entries:
            self.ledger.write_many(entries)
            self.log.info(
                "VibeDream ledger: %d known-bad inputs recorded (later runs skip them at no cost)",
                len(entries),
            )

    def withdraw(self, items: list[BatchImage]) -> None:
        """Intents whose submit surely made no job (refused, never sent): the image is new again."""
        for item in items:
            if item.ledger_key:
                self.ledger.delete(item.ledger_key)

    # -- results -----------------------------------------------------------------------------------

    def record_completed(self, done: list[tuple[BatchImage, SubmissionRecord, list[StoredOutput]]]) -> None:
        """The completed images, in one page (their outputs' ETags read with one listing per folder)."""
        entries = []
        for item, record, stored in done:
            if not (record.ledger_key and record.identity and record.prediction_id and stored):
                continue
            entries.append(
                (
                    LedgerEntry(
                        key=record.ledger_key,
                        state=COMPLETED,
                        model_id=item.spec.model_id,
                        ask=decisive_ask(item.spec.asked),
                        input=item.image,
                        identity=record.identity,
                        prediction_id=record.prediction_id,
                        cost_cents=record.cost_cents,
                        task=self.task,
                    ),
                    stored,
                )
            )
        self.ledger.write_page(self.ledger.completed_many(entries))

    def forget(self, records: list[SubmissionRecord]) -> None:
        """Entries whose job failed for good: the next run submits those images anew."""
        keys = {r.ledger_key: r.prediction_id for r in records if r.ledger_key and r.prediction_id}
        for key, entry in self.ledger.lookup(keys).items():
            if entry.prediction_id == keys[key] and entry.state != COMPLETED:
                self.ledger.delete(key)
