"""Many predictions in one task: submits that record every returned id at once, stop cleanly when
interrupted, and never resend a submit whose outcome is unknown; and one reading of poll answers.

A record is keyed by the fingerprint of its image's request, not by its position in the list: a
retry after the list changed (reordered, grown, shrunk) still finds each image's own job, and
never adopts another image's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.sync import VibeDreamClient
from airflow_vibedream.errors import (
    VibeDreamError,
    VibeDreamInputRefusedError,
    VibeDreamSubmissionStateUnknownError,
    is_permanent,
)
from airflow_vibedream.jobs.fingerprint import JobSpec
from airflow_vibedream.jobs.identity import ContentIdentity
from airflow_vibedream.jobs.submissions import UNKNOWN, SubmissionRecord, SubmissionStore

#: task_state_store key of one image's record.
BATCH_STATE_KEY = "vibedream_batch_{fingerprint}"


@dataclass(frozen=True)
class BatchImage:
    """One image of a batch.

    :param index: its position in the rendered list.
    :param image: the image as the user named it.
    :param spec: what is asked for it.
    :param identity: its content identity, when the ledger is used.
    :param ledger_key: its ledger key, when the ledger is used.
    """

    index: int
    image: str
    spec: JobSpec
    identity: ContentIdentity | None = None
    ledger_key: str | None = None

    def record(
        self, prediction_id: str | None, cost_cents: int | None = None, **more: Any
    ) -> SubmissionRecord:
        """This image's submission record."""
        return SubmissionRecord(
            self.spec.fingerprint,
            dict(self.spec.asked),
            prediction_id,
            cost_cents,
            ledger_key=self.ledger_key,
            identity=self.identity.to_json() if self.identity else None,
            **more,
        )

    @property
    def key(self) -> str:
        return BATCH_STATE_KEY.format(fingerprint=self.spec.fingerprint)


class SubmitsStopped(Exception):
    """The batch's submits were stopped (``on_kill``): the queued images were not sent."""


class TaskStateGone(Exception):
    """The task's own state could not be written (the task instance was cleared, marked or deleted
    while it submitted: Airflow answers 404/409): this try is no longer the task's, so it sends
    nothing more. Every id that came back is in the ledger's journal first; this is never read as a
    failed submit."""


class RateLimiter:
    """At most ``per_minute`` acquisitions a minute, evenly spaced; thread-safe. None: no limit.
    A wait ends early when ``stop`` is set (then :class:`SubmitsStopped` is raised)."""

    def __init__(self, per_minute: float | None, stop: threading.Event | None = None) -> None:
        self._spacing = 60.0 / per_minute if per_minute else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()
        self._stop = stop or threading.Event()

    def acquire(self) -> None:
        if not self._spacing:
            return
        with self._lock:
            now = time.monotonic()
            wait_for = self._next - now
            self._next = max(now, self._next) + self._spacing
        if wait_for > 0 and self._stop.wait(wait_for):
            raise SubmitsStopped


@dataclass
class SubmitResult:
    """What the submits of one try produced.

    :param records: recorded submissions by key (new ones; an id that came back is always here).
    :param errors: images whose submit surely created no job, with the reason (sent again by a retry).
    :param never_sent: images whose POST was never made (stopped first, or cancelled while queued).
    :param permanent: images among ``errors`` that no retry can help (a refused input, a 400/422).
    :param known_bad: images among ``permanent`` whose bytes are not an image the API accepts (the
        ledger records them, so later runs skip them at no cost).
    """

    records: dict[str, SubmissionRecord]
    errors: dict[str, str]
    never_sent: set[str] = field(default_factory=set)
    permanent: set[str] = field(default_factory=set)
    known_bad: set[str] = field(default_factory=set)


class BatchSubmitter:
    """Submits a batch's images with bounded concurrency, recording each id the moment it returns.

    On any exception in the waiting thread (``execution_timeout``, an error) or after :meth:`stop`
    (``on_kill``): the queued submits are cancelled, the in-flight ones are awaited for at most
    ``request_timeout`` seconds and their ids recorded, those still in flight then are recorded as
    ``unknown`` (never resent automatically), and only then is the error raised.

    :param client: the VibeDream client.
    :param store: where records go.
    :param log: the task's logger.
    :param payload: builds an image's request body (presigning happens here, per submit).
    :param max_concurrency: submits in flight at once.
    :param requests_per_minute: submit rate limit (None: none).
    :param request_timeout: the longest to wait for in-flight submits when interrupted, seconds.
    :param on_submitted: called with each image and its prediction as its id returns (the ledger's
        group journal).
    """

    def __init__(
        self,
        *,
        client: VibeDreamClient,
        store: SubmissionStore,
        log: logging.Logger | Any,
        payload: Callable[[BatchImage], Mapping[str, Any]],
        max_concurrency: int,
        requests_per_minute: float | None,
        request_timeout: float,
        on_submitted: Callable[[BatchImage, Prediction], None] | None = None,
    ) -> None:
        self.on_submitted = on_submitted
        self.client = client
        self.store = store
        self.log = log
        self.payload = payload
        self.max_concurrency = max_concurrency
        self.request_timeout = request_timeout
        self._stopped = threading.Event()
        self._limiter = RateLimiter(requests_per_minute, self._stopped)
        #: Why the task's own state could not be written, once it could not (this try is over).
        self.state_gone: BaseException | None = None
        #: Images whose request failed to be built: surely never POSTed (set.add is thread-safe).
        self._not_posted: set[str] = set()

    def stop(self) -> None:
        """Send nothing more (safe from a signal handler: it only sets a flag)."""
        self._stopped.set()

    def _submit_one(self, item: BatchImage) -> Prediction:
        if self._stopped.is_set():
            raise SubmitsStopped
        try:
            body = self.payload(item)  # presigning, the input check: before any POST
        except BaseException:
            self._not_posted.add(item.key)
            raise
        self._limiter.acquire()
        if self._stopped.is_set():
            raise SubmitsStopped
        return self.client.submit(item.spec.model_id, body)

    def submit_all(self, todo: list[BatchImage]) -> SubmitResult:
        #: What this call produced so far: still readable when it raises (interrupted).
        self.result = result = SubmitResult({}, {})
        if not todo:
            return result
        pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="vibedream-submit")
        futures: dict[Future[Prediction], BatchImage] = {
            pool.submit(self._submit_one, item): item for item in todo
        }
        pending = set(futures)
        handled: set[Future[Prediction]] = set()
        try:
            while pending:
                # Woken at least every second, so a stop() from on_kill is seen promptly.
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    handled.add(future)  # first: an error read from it must not be read again
                    self._record(futures[future], future, result)
                if self.state_gone is not None:
                    raise TaskStateGone(
                        "VibeDream batch: this task's state can no longer be written (the task instance "
                        f"was cleared, marked or deleted while it submitted: {self.state_gone}); sending "
                        "nothing more. Every id that came back is in the ledger"
                    ) from self.state_gone
                if self._stopped.is_set():
                    raise SubmitsStopped("VibeDream batch submits were stopped (the task was killed)")
        except BaseException:
            self._stopped.set()
            pool.shutdown(wait=False, cancel_futures=True)
            self._wind_down({f: item for f, item in futures.items() if f not in handled}, result)
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return result

    def _wind_down(self, unhandled: dict[Future[Prediction], BatchImage], result: SubmitResult) -> None:
        """Record what the in-flight submits return (waiting one request timeout at most)."""
        in_flight = {future for future in unhandled if not future.cancelled()}
        done, still_running = wait(in_flight, timeout=self.request_timeout)
        for future in done:
            self._record(unhandled[future], future, result)
        result.never_sent.update(unhandled[future].key for future in unhandled if future.cancelled())
        for future in still_running:
            # Its answer may yet create a job this process will never see: never send it again.
            self._record_unknown(
                unhandled[future], "the task was interrupted while this submit was in flight", result
            )
        self.log.warning(
            "VibeDream batch interrupted: %d submits recorded this try, %d in flight recorded as state "
            "unknown, %d not sent",
            len(result.records),
            len(still_running),
            len(result.never_sent),
        )

    def _record(self, item: BatchImage, future: Future[Prediction], result: SubmitResult) -> None:
        try:
            prediction = future.result()
        except SubmitsStopped:
            result.never_sent.add(item.key)
            return
        except VibeDreamSubmissionStateUnknownError as exc:
            self._record_unknown(item, str(exc), result)
            return
        except VibeDreamError as exc:
            # Surely no job (refused, rate limited, never sent): a retry may send it, unless no retry
            # can change the answer (the input's bytes, a request the API refuses).
            result.errors[item.key] = str(exc)
            if is_permanent(exc):
                result.permanent.add(item.key)
            if isinstance(exc, VibeDreamInputRefusedError):
                result.known_bad.add(item.key)
            return
        except BaseException:
            if item.key in self._not_posted:  # its request was never built: the image is new again
                result.never_sent.add(item.key)
            raise
        # Record first, then everything else: the job exists and is billed. The ledger's journal
        # (outside Airflow) hears of it before the task's own state, whose write can fail.
        record = item.record(prediction.id, prediction.cost_cents)
        result.records[item.key] = record
        if self.on_submitted is not None:
            self.on_submitted(item, prediction)
        self._keep(item, record)

    def _record_unknown(self, item: BatchImage, reason: str, result: SubmitResult) -> None:
        record = item.record(None, state=UNKNOWN, error=reason)
        result.records[item.key] = record
        self._keep(item, record)

    def _keep(self, item: BatchImage, record: SubmissionRecord) -> None:
        """The record in the task's own state; a write that fails ends the try's sending (the task
        instance is no longer this try's), never the record of what was submitted."""
        if self.state_gone is not None:
            return
        try:
            self.store.set(item.key, record)
        except Exception as exc:
            self.state_gone = exc
            self._stopped.set()
            self.log.warning(
                "VibeDream batch: the task's state could not be written (%s); no more submits this try",
                exc,
            )
