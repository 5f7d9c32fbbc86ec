"""VibeDreamPredictionTrigger: waits for a prediction in the triggerer, without a worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.constants import DEFAULT_POLL_INTERVAL
from airflow_vibedream.errors import VibeDreamError, VibeDreamTimeoutError
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.tasks.events import (
    EVENT_ERROR,
    EVENT_SUCCESS,
    EVENT_TIMEOUT,
    BatchEvent,
    PredictionEvent,
    Throttled,
    as_waiting_error,
    batch_event,
    error_event,
    log_unavailable,
    terminal_event,
    timeout_event,
)
from airflow_vibedream.tasks.progress import PUBLISH_EVERY, ProgressPublisher
from airflow_vibedream.tasks.settle import settle
from airflow_vibedream.waiting.decisions import FAILED, PredictionWait, poll_outcome
from airflow_vibedream.waiting.scheduler import loop_scheduler
from airflow_vibedream.waiting.status import StatusTracker


class KeyRotation:
    """After a 401/403 while waiting, reads the connection once more (once for every wait of the
    trigger): if its key (or host) changed since, the waits poll again with the new one; if not, the
    refusal stands (see :meth:`.PredictionWait.key_reread`)."""

    def __init__(self, hook: VibeDreamHook, log: Any) -> None:
        self._hook = hook
        self._log = log
        self._lock = asyncio.Lock()
        self._changed: bool | None = None

    async def reread(self) -> bool:
        """True when the connection's settings changed since the refused poll."""
        async with self._lock:  # a batch's refused images share the one re-read
            if self._changed is None:
                refused = await self._hook.get_shared_async_client()
                fresh = await self._hook.get_shared_async_client(refresh=True)
                self._changed = fresh.settings != refused.settings
                if self._changed:
                    self._log.warning(
                        "VibeDream refused the API key; connection %s has new settings since: retrying",
                        self._hook.vibedream_conn_id,
                    )
            return self._changed


class VibeDreamPredictionTrigger(BaseTrigger):
    """Polls one VibeDream prediction until it is completed or failed, then fires exactly one event.

    The event is ``{"status": "success"|"failed"|"timeout"|"error", "prediction_id": ...,
    "prediction": {...} or None, "message": ...}``. The trigger keeps no state it cannot rebuild from
    its arguments, so a restart on another triggerer simply resumes polling; the deadline is wall-clock.

    :param prediction_id: the prediction to wait for.
    :param vibedream_conn_id: the Airflow connection (the trigger never carries the API key itself).
    :param poll_interval: seconds between polls (the API suggests 1-2 s).
    :param end_time: epoch seconds after which a ``timeout`` event fires; None waits forever.
    :param duration_kind: what kind of job this is (e.g. ``image-upscaler:4k``): the triggerer learns
        how long jobs of a kind take and polls them where they finish (see
        :mod:`airflow_vibedream.waiting.durations`). None: ``default``.
    :param created_at: the job's creation, epoch seconds, if the operator knows it (the first poll
        can then wait until jobs of its kind start finishing).
    :param fire_not_before: epoch seconds before which the event is held back, so that the deferral
        has settled in Airflow (see :mod:`airflow_vibedream.tasks.settle`); None: at once.
    :param model_id: the model the prediction was asked of, if known: an answer naming another model
        (or another prediction) is never adopted.
    :param large_answers: base64 outputs may have been asked, so the final answer may carry the
        images: polls read up to the connection's ``max_response_bytes``. The operators pass False
        when they asked none: polls then read a status answer's size at most (64 KiB), so a hostile
        API cannot fill the triggerer's memory.
    """

    def __init__(
        self,
        prediction_id: str,
        vibedream_conn_id: str = VibeDreamHook.default_conn_name,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        end_time: float | None = None,
        duration_kind: str | None = None,
        created_at: float | None = None,
        fire_not_before: float | None = None,
        model_id: str | None = None,
        large_answers: bool = True,
    ) -> None:
        super().__init__()
        self.prediction_id = prediction_id
        self.vibedream_conn_id = vibedream_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time) if end_time is not None else None
        self.duration_kind = duration_kind
        self.created_at = float(created_at) if created_at is not None else None
        self.fire_not_before = float(fire_not_before) if fire_not_before is not None else None
        self.model_id = model_id
        self.large_answers = bool(large_answers)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "prediction_id": self.prediction_id,
                "vibedream_conn_id": self.vibedream_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "duration_kind": self.duration_kind,
                "created_at": self.created_at,
                "fire_not_before": self.fire_not_before,
                "model_id": self.model_id,
                "large_answers": self.large_answers,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        event = await self._wait()
        await settle(self.fire_not_before)
        yield TriggerEvent(event)

    async def _wait(self) -> PredictionEvent:
        hook = VibeDreamHook(self.vibedream_conn_id)
        wait = PredictionWait(
            self.prediction_id,
            interval=self.poll_interval,
            deadline=self.end_time,
            kind=self.duration_kind or "default",
            created_at=self.created_at,
            model_id=self.model_id,
            large_answers=self.large_answers,
        )
        try:
            # The loop's one scheduler polls this prediction among all others (one heap, a window
            # of polls in flight, one outage gate), and answers once the wait decides it is over.
            scheduler = loop_scheduler(self.vibedream_conn_id, hook.get_shared_async_client)
            prediction = await scheduler.wait(
                wait,
                observe=StatusTracker(self._log_status_change).observe,
                on_unavailable=self._log_unavailable,
                reread=KeyRotation(hook, self.log).reread,
            )
            return terminal_event(prediction)
        except VibeDreamTimeoutError as exc:
            assert self.end_time is not None  # only a deadline raises it
            return timeout_event(self.prediction_id, self.end_time, exc)
        except VibeDreamError as exc:
            # Transient errors were ridden out until the deadline; what reaches here is final.
            self.log.error("Stopped waiting for VibeDream prediction %s: %s", self.prediction_id, exc)
            return error_event(self.prediction_id, exc)
        except Exception as exc:
            # Never die without an event: the task would wait for its deferral timeout instead.
            self.log.exception("Stopped waiting for VibeDream prediction %s", self.prediction_id)
            return error_event(self.prediction_id, as_waiting_error(exc))

    def _log_status_change(self, prediction: Prediction, elapsed: float) -> None:
        self.log.info("VibeDream prediction %s is %s after %.1fs", prediction.id, prediction.status, elapsed)

    def _log_unavailable(self, seconds: float, error: VibeDreamError) -> None:
        log_unavailable(self.log, seconds, error)


class VibeDreamBatchTrigger(BaseTrigger):
    """Waits for many predictions, each through the loop's one poll scheduler at the same cadence as a
    single prediction's, and fires one event when all are over.

    The event is ``{"status": "success"|"timeout"|"error", "total": n, "failed": {id: error},
    "pending": [ids still processing at the deadline], "message": ...}``; outputs are not in it (the
    worker fetches them), so it stays small. A progress line (done/total, failures) is logged at a
    steady interval.

    :param prediction_ids: the predictions to wait for.
    :param vibedream_conn_id: the Airflow connection.
    :param poll_interval: seconds between polls of each prediction where jobs of its kind finish.
    :param end_time: epoch seconds after which a ``timeout`` event fires; None waits forever.
    :param progress_interval: seconds between progress lines.
    :param duration_kind: what kind of jobs these are (see :class:`VibeDreamPredictionTrigger`).
    :param progress: the batch's progress record when it deferred (see
        :class:`airflow_vibedream.tasks.records.BatchProgress`); if given, the trigger keeps the
        batch's progress XCom current for the gallery while it waits.
    :param fire_not_before: epoch seconds before which the event is held back (see
        :class:`VibeDreamPredictionTrigger`).
    :param model_id: the model the jobs were asked of (see :class:`VibeDreamPredictionTrigger`).

    A batch never asks base64 outputs: its polls read a status answer's size at most.
    """

    def __init__(
        self,
        prediction_ids: list[str],
        vibedream_conn_id: str = VibeDreamHook.default_conn_name,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        end_time: float | None = None,
        progress_interval: float = 30.0,
        progress: dict[str, Any] | None = None,
        duration_kind: str | None = None,
        fire_not_before: float | None = None,
        model_id: str | None = None,
    ) -> None:
        super().__init__()
        self.prediction_ids = list(prediction_ids)
        self.vibedream_conn_id = vibedream_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time) if end_time is not None else None
        self.progress_interval = float(progress_interval)
        self.progress = progress
        self.duration_kind = duration_kind
        self.fire_not_before = float(fire_not_before) if fire_not_before is not None else None
        self.model_id = model_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "prediction_ids": self.prediction_ids,
                "vibedream_conn_id": self.vibedream_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "progress_interval": self.progress_interval,
                "progress": self.progress,
                "duration_kind": self.duration_kind,
                "fire_not_before": self.fire_not_before,
                "model_id": self.model_id,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        event = await self._wait()
        await settle(self.fire_not_before)
        yield TriggerEvent(event)

    async def _wait(self) -> BatchEvent:
        return await _BatchWait(self).until_all_over()


class _BatchWait:
    """One batch trigger's wait: every image through the loop's one poll scheduler, what is still
    outstanding and what failed, the progress kept current, one key re-read for the whole batch."""

    def __init__(self, trigger: VibeDreamBatchTrigger) -> None:
        self.trigger = trigger
        self.total = len(trigger.prediction_ids)
        self.outstanding = set(trigger.prediction_ids)
        self.failed: dict[str, str] = {}
        self.started = time.monotonic()
        self.hook = VibeDreamHook(trigger.vibedream_conn_id)
        self.keys = KeyRotation(self.hook, trigger.log)
        self.progress = ProgressPublisher(trigger.progress, trigger.log)
        self.report = Throttled(lambda seconds, error: log_unavailable(trigger.log, seconds, error))

    async def until_all_over(self) -> BatchEvent:
        """Wait for every image (or the deadline, or the first error that ends them all): the event."""
        reporter = asyncio.ensure_future(self.report_progress())
        waits = [asyncio.ensure_future(self.one(prediction_id)) for prediction_id in sorted(self.outstanding)]
        try:
            # The first error of the batch (a refused key that did not change) ends every wait.
            await asyncio.wait(waits, return_when=asyncio.FIRST_EXCEPTION)
            stopped = next((w.exception() for w in waits if w.done() and w.exception()), None)
        finally:
            reporter.cancel()
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        return self.event(stopped)

    def event(self, stopped: BaseException | None) -> BatchEvent:
        total, failed, pending, log = self.total, self.failed, sorted(self.outstanding), self.trigger.log
        if isinstance(stopped, VibeDreamError):
            log.error("Stopped waiting for the VibeDream batch: %s", stopped)
            return batch_event(EVENT_ERROR, total, failed, pending, str(stopped), stopped)
        if stopped is not None:
            log.error("Stopped waiting for the VibeDream batch", exc_info=stopped)
            wrapped = as_waiting_error(stopped)
            return batch_event(EVENT_ERROR, total, failed, pending, str(wrapped), wrapped)
        self.log_progress()
        if pending:
            return batch_event(EVENT_TIMEOUT, total, failed, pending, "deadline reached")
        return batch_event(EVENT_SUCCESS, total, failed, [], f"{total - len(failed)} of {total} completed")

    async def one(self, prediction_id: str) -> None:
        """Wait for one image, with the same cadence as a single-image trigger's (no polling in
        rounds): one heap entry per image."""
        trigger = self.trigger
        wait = PredictionWait(
            prediction_id,
            interval=trigger.poll_interval,
            deadline=trigger.end_time,
            kind=trigger.duration_kind or "default",
            model_id=trigger.model_id,
            large_answers=False,
        )
        scheduler = loop_scheduler(trigger.vibedream_conn_id, self.hook.get_shared_async_client)
        try:
            answer: Prediction | VibeDreamError = await scheduler.wait(
                wait, on_unavailable=self.report, reread=self.keys.reread
            )
        except VibeDreamTimeoutError:  # the deadline: this image stays pending
            return
        except VibeDreamError as exc:
            answer = exc  # a 404 fails this image only; poll_outcome raises anything else
        await self.over(prediction_id, answer)

    async def over(self, prediction_id: str, answer: Prediction | VibeDreamError) -> None:
        state, error = poll_outcome(answer)
        self.outstanding.discard(prediction_id)
        if state == FAILED:
            self.failed[prediction_id] = error or "failed (no reason given)"
        # Never awaited: the last image's event must not wait for the gallery's progress.
        self.progress.publish(
            self.trigger.task_instance, done=self.total - len(self.outstanding), failed=len(self.failed)
        )

    async def report_progress(self) -> None:
        """The gallery's progress every few seconds (completions alone would leave it stale when the
        last jobs finish close together), the log line every progress_interval."""
        trigger = self.trigger
        last_line = time.monotonic()
        while True:
            await asyncio.sleep(min(PUBLISH_EVERY, trigger.progress_interval))
            done = self.total - len(self.outstanding)
            self.progress.publish(trigger.task_instance, done=done, failed=len(self.failed))
            if time.monotonic() - last_line >= trigger.progress_interval:
                last_line = time.monotonic()
                self.log_progress()

    def log_progress(self) -> None:
        pending, elapsed = len(self.outstanding), time.monotonic() - self.started
        self.trigger.log.info(
            "VibeDream batch: %d/%d done, %d failed, %.0fs elapsed",
            self.total - pending,
            self.total,
            len(self.failed),
            elapsed,
        )
