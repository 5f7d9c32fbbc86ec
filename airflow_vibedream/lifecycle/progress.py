"""A batch's progress, published as an XCom for the gallery while the batch waits.

From the worker it is an ordinary ``xcom_push``. From the triggerer it goes through the Task SDK's
XCom API (the triggerer forwards it to the API server like a task's own), at most every
:data:`PUBLISH_EVERY` seconds. Progress is a convenience: failing to publish it never fails the
batch, it is logged once."""

from __future__ import annotations

import time
from typing import Any

from airflow_vibedream.lifecycle.records import PROGRESS_XCOM_KEY, BatchProgress

#: Seconds between two progress XComs of one waiting batch (the gallery page refreshes every 5 s).
PUBLISH_EVERY = 5.0


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

    async def publish(self, task_instance: Any, *, done: int, failed: int, force: bool = False) -> None:
        if self.base is None or self._broken or task_instance is None:
            return
        now = time.monotonic()
        if not force and now - self._last < PUBLISH_EVERY:
            return
        self._last = now
        value = self.base.advanced(done=done, failed=failed).to_json()
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
