"""VibeDreamPredictionTrigger: waits for a prediction in the triggerer, without a worker slot."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_vibedream.client.aio import AsyncVibeDreamClient
from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.schedule import PollSchedule, StatusTracker, elapsed_since, next_sleep
from airflow_vibedream.constants import DEFAULT_POLL_INTERVAL
from airflow_vibedream.errors import VibeDreamAuthError, VibeDreamError, VibeDreamTimeoutError
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.lifecycle.batch import FAILED, PENDING, poll_outcome
from airflow_vibedream.lifecycle.events import (
    EVENT_ERROR,
    EVENT_SUCCESS,
    EVENT_TIMEOUT,
    Throttled,
    error_event,
    log_unavailable,
    terminal_event,
    timeout_event,
    unexpected,
)


class KeyRotation:
    """On a 401/403 while waiting, read the connection once more: if its key (or host) changed since,
    the next poll uses the new one; if not, or if it was already retried once, the refusal stands."""

    def __init__(self, hook: VibeDreamHook, log: Any) -> None:
        self._hook = hook
        self._log = log
        self._retried = False

    async def after_refusal(self, client: AsyncVibeDreamClient, refusal: VibeDreamAuthError) -> None:
        if self._retried:
            raise refusal
        self._retried = True
        fresh = await self._hook.get_shared_async_client(refresh=True)
        if fresh.settings == client.settings:
            raise refusal
        self._log.warning(
            "VibeDream refused the API key (HTTP %s); connection %s has new settings since: retrying",
            refusal.status_code,
            self._hook.vibedream_conn_id,
        )


class VibeDreamPredictionTrigger(BaseTrigger):
    """Polls one VibeDream prediction until it is completed or failed, then fires exactly one event.

    The event is ``{"status": "success"|"failed"|"timeout"|"error", "prediction_id": ...,
    "prediction": {...} or None, "message": ...}``. The trigger keeps no state it cannot rebuild from
    its arguments, so a restart on another triggerer simply resumes polling; the deadline is wall-clock.

    :param prediction_id: the prediction to wait for.
    :param vibedream_conn_id: the Airflow connection (the trigger never carries the API key itself).
    :param poll_interval: seconds between polls (the API suggests 1-2 s).
    :param end_time: epoch seconds after which a ``timeout`` event fires; None waits forever.
    """

    def __init__(
        self,
        prediction_id: str,
        vibedream_conn_id: str = VibeDreamHook.default_conn_name,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        end_time: float | None = None,
    ) -> None:
        super().__init__()
        self.prediction_id = prediction_id
        self.vibedream_conn_id = vibedream_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time) if end_time is not None else None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "prediction_id": self.prediction_id,
                "vibedream_conn_id": self.vibedream_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(await self._wait())

    async def _wait(self) -> dict[str, Any]:
        tracker = StatusTracker(self._log_status_change)
        hook = VibeDreamHook(self.vibedream_conn_id)
        keys = KeyRotation(hook, self.log)
        try:
            # The API's 1-2 s while a job is young; past a minute, 3% of its age, up to 10 s.
            schedule = PollSchedule(interval=self.poll_interval, max_interval=max(self.poll_interval, 10.0))
            started = time.monotonic()
            created: float | None = None  # the prediction's creation, on the monotonic clock
            # Spread the first polls over one interval: a thousand mapped tasks deferring together
            # would otherwise poll in one burst (and keep polling in lockstep), which shows as
            # event-loop lag for everyone. A job is never seen later than one interval this way.
            await asyncio.sleep(next_sleep(random.uniform(0, self.poll_interval), self.end_time))
            while True:
                if self.end_time is not None and time.time() >= self.end_time:
                    return timeout_event(self.prediction_id, self.end_time)
                polled_at = time.monotonic()
                # Transient failures are ridden out here, until the deadline, through the gate that
                # every trigger on this loop shares (one probe while the API is down).
                # Asked for before every poll (a dict lookup): a rotated key takes effect at once.
                client = await hook.get_shared_async_client()
                try:
                    prediction = await client.poll_patiently(
                        self.prediction_id,
                        deadline=self.end_time,
                        spread=self.poll_interval,
                        on_unavailable=self._log_unavailable,
                    )
                except VibeDreamAuthError as exc:
                    await keys.after_refusal(client, exc)  # re-raises unless the key changed
                    continue
                tracker.observe(prediction)
                if prediction.is_terminal:
                    return terminal_event(prediction)
                if created is None:  # parsed once: the creation time never changes
                    created = time.monotonic() - elapsed_since(prediction.created_at, started)
                # A steady cadence from poll to poll (not from answer to poll), so a finished job is
                # seen within one interval; a poll slowed by retries still leaves a short pause.
                now = time.monotonic()
                interval = schedule.next_interval(now - created)
                pause = max(interval - (now - polled_at), 0.1 * interval)
                await asyncio.sleep(next_sleep(pause, self.end_time))
        except VibeDreamTimeoutError:
            assert self.end_time is not None  # only a deadline raises it
            return timeout_event(self.prediction_id, self.end_time)
        except VibeDreamError as exc:
            # Transient errors were ridden out until the deadline; what reaches here is final.
            self.log.error("Stopped waiting for VibeDream prediction %s: %s", self.prediction_id, exc)
            return error_event(self.prediction_id, exc)
        except Exception as exc:
            # Never die without an event: the task would wait for its deferral timeout instead.
            self.log.exception("Stopped waiting for VibeDream prediction %s", self.prediction_id)
            return error_event(self.prediction_id, unexpected(exc))

    def _log_status_change(self, prediction: Prediction, elapsed: float) -> None:
        self.log.info("VibeDream prediction %s is %s after %.1fs", prediction.id, prediction.status, elapsed)

    def _log_unavailable(self, seconds: float, error: VibeDreamError) -> None:
        log_unavailable(self.log, seconds, error)


class VibeDreamBatchTrigger(BaseTrigger):
    """Polls many predictions with one shared client and fires one event when all are over.

    The event is ``{"status": "success"|"timeout"|"error", "total": n, "failed": {id: error},
    "pending": [ids still processing at the deadline], "message": ...}``; outputs are not in it (the
    worker fetches them), so it stays small. A progress line (done/total, failures) is logged at a
    steady interval.

    :param prediction_ids: the predictions to wait for.
    :param vibedream_conn_id: the Airflow connection.
    :param poll_interval: seconds between polling rounds.
    :param end_time: epoch seconds after which a ``timeout`` event fires; None waits forever.
    :param max_concurrency: polls in flight at once.
    :param progress_interval: seconds between progress lines.
    """

    def __init__(
        self,
        prediction_ids: list[str],
        vibedream_conn_id: str = VibeDreamHook.default_conn_name,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        end_time: float | None = None,
        max_concurrency: int = 16,
        progress_interval: float = 30.0,
    ) -> None:
        super().__init__()
        self.prediction_ids = list(prediction_ids)
        self.vibedream_conn_id = vibedream_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time) if end_time is not None else None
        self.max_concurrency = int(max_concurrency)
        self.progress_interval = float(progress_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "prediction_ids": self.prediction_ids,
                "vibedream_conn_id": self.vibedream_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "max_concurrency": self.max_concurrency,
                "progress_interval": self.progress_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(await self._wait())

    async def _wait(self) -> dict[str, Any]:
        total = len(self.prediction_ids)
        outstanding = list(dict.fromkeys(self.prediction_ids))
        failed: dict[str, str] = {}
        started = time.monotonic()
        last_progress = started
        hook = VibeDreamHook(self.vibedream_conn_id)
        keys = KeyRotation(hook, self.log)
        try:
            client = await hook.get_shared_async_client()
            slots = asyncio.Semaphore(self.max_concurrency)

            report = Throttled(lambda seconds, error: log_unavailable(self.log, seconds, error))

            async def poll(prediction_id: str) -> tuple[str, str | None]:
                async with slots:
                    try:
                        return poll_outcome(
                            await client.poll_patiently(
                                prediction_id,
                                deadline=self.end_time,
                                spread=self.poll_interval,
                                on_unavailable=report,
                            )
                        )
                    except VibeDreamTimeoutError:  # the deadline came during an outage
                        return PENDING, None
                    except VibeDreamError as exc:
                        # The worker loop's reading: a 404 fails this image only; anything else
                        # (a refused key, an outage past the retries) is raised for the batch.
                        return poll_outcome(exc)

            while outstanding:
                if self.end_time is not None and time.time() >= self.end_time:
                    return self._event(EVENT_TIMEOUT, total, failed, outstanding, "deadline reached")
                client = await hook.get_shared_async_client()  # a rotated key takes effect at once
                try:
                    answers = await asyncio.gather(*(poll(pid) for pid in outstanding))
                except VibeDreamAuthError as exc:
                    await keys.after_refusal(client, exc)  # re-raises unless the key changed
                    continue
                still = []
                for prediction_id, (state, error) in zip(outstanding, answers, strict=True):
                    if state == FAILED:
                        failed[prediction_id] = error or "failed (no reason given)"
                    elif state == PENDING:
                        still.append(prediction_id)
                outstanding = still
                if outstanding and time.monotonic() - last_progress >= self.progress_interval:
                    last_progress = time.monotonic()
                    self._log_progress(total, len(outstanding), len(failed), last_progress - started)
                if outstanding:
                    await asyncio.sleep(next_sleep(self.poll_interval, self.end_time))
        except VibeDreamError as exc:
            self.log.error("Stopped waiting for the VibeDream batch: %s", exc)
            return self._event(EVENT_ERROR, total, failed, outstanding, str(exc), exc)
        except Exception as exc:
            self.log.exception("Stopped waiting for the VibeDream batch")
            wrapped = unexpected(exc)
            return self._event(EVENT_ERROR, total, failed, outstanding, str(wrapped), wrapped)
        self._log_progress(total, 0, len(failed), time.monotonic() - started)
        return self._event(EVENT_SUCCESS, total, failed, [], f"{total - len(failed)} of {total} completed")

    def _log_progress(self, total: int, pending: int, failures: int, elapsed: float) -> None:
        self.log.info(
            "VibeDream batch: %d/%d done, %d failed, %.0fs elapsed", total - pending, total, failures, elapsed
        )

    @staticmethod
    def _event(
        status: str,
        total: int,
        failed: dict[str, str],
        pending: list[str],
        message: str,
        error: VibeDreamError | None = None,
    ) -> dict[str, Any]:
        return {
            "status": status,
            "total": total,
            "failed": failed,
            "pending": pending,
            "message": message,
            "error_type": type(error).__name__ if error is not None else None,
            "status_code": error.status_code if error is not None else None,
        }
