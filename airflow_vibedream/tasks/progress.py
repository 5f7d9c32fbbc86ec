"""A batch's progress, published as an XCom for the gallery while the batch waits.

From the worker it is an ordinary ``xcom_push``. From the triggerer it goes through the Task SDK's
XCom API (the triggerer forwards it to the API server like a task's own), at most every
:data:`PUBLISH_EVERY` seconds, in the background: the batch's event never waits for it. (On Airflow
3.3 a fresh triggerer's first XCom from a trigger makes its supervisor build its in-process API,
which took 20-60 s on a 2-core machine; awaited, that held a finished batch's event as long.)
Progress is a convenience: failing to publish it never fails the batch, it is logged once; the
final progress is the worker's, written with the manifest."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from airflow_vibedream.tasks.records import PROGRESS_XCOM_KEY, BatchProgress

#: Seconds between two progress XComs of one waiting batch (the gallery page refreshes every 5 s).
PUBLISH_EVERY = 5.0
#: Publishes in flight on any loop (a task the loop only holds weakly could be collected mid-way).
_IN_FLIGHT: set[asyncio.Task[None]] = set()


class ProgressPublisher:
    """Publishes a batch's progress from a trigger.

    :param base: the batch as the operator deferred it (images, jobs, cost).
    :param log: the trigger's logger.
    """

    def __init__(self, base: dict[str, Any] | None, log: Any) -> None:
        self.base = BatchProgress.from_json(base) if base else None
        self.log = log
        self._last = 0.0
        self._broken = False
        #: The publish in flight (one at a time: a slow one is not queued behind, it is skipped).
        self._inflight: asyncio.Task[None] | None = None

    def publish(self, task_instance: Any, *, done: int, failed: int) -> None:
        """Start publishing (in the background, on the running loop) unless one is in flight or
        the last started less than :data:`PUBLISH_EVERY` seconds ago."""
        if self.base is None or self._broken or task_instance is None:
            return
        now = time.monotonic()
        if now - self._last < PUBLISH_EVERY or (self._inflight is not None and not self._inflight.done()):
            return
        self._last = now
        value = self.base.advanced(done=done, failed=failed).to_json()
        # Held here until done, even after the trigger is gone: never cancelled half-way (a request
        # to the supervisor cut after sending would leave its answer unread).
        self._inflight = task = asyncio.get_running_loop().create_task(self._set(task_instance, value))
        _IN_FLIGHT.add(task)
        task.add_done_callback(_IN_FLIGHT.discard)

    async def _set(self, task_instance: Any, value: dict[str, Any]) -> None:
        try:
            await set_xcom_async(task_instance, PROGRESS_XCOM_KEY, value)
        except Exception as exc:  # e.g. dag.test(), which has no API server to forward to
            self._broken = True
            self.log.info("VibeDream batch progress is not published to the gallery here: %s", exc)


async def set_xcom_async(task_instance: Any, key: str, value: Any) -> None:
    """Set an XCom of ``task_instance`` from async code in the triggerer."""
    from airflow.providers.common.compat.sdk import XCom

    where = {
        "dag_id": task_instance.dag_id,
        "task_id": task_instance.task_id,
        "run_id": task_instance.run_id,
        "map_index": task_instance.map_index if task_instance.map_index is not None else -1,
    }
    setter = getattr(XCom, "aset", None)
    if setter is not None:  # Task SDK 1.3+ (Airflow 3.3)
        await setter(key, value, **where)
        return
    from asgiref.sync import sync_to_async

    # Older Task SDKs talk to the triggerer's supervisor synchronously only: from a thread, as
    # their connection lookups do, so the event loop never blocks.
    await sync_to_async(XCom.set)(key, value, **where)
