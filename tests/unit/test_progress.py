"""A batch's progress from the triggerer is published in the background: a publish that hangs (a
fresh triggerer's supervisor building its in-process API) never holds the batch's event."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airflow_vibedream.tasks import progress as progress_module
from airflow_vibedream.tasks.progress import ProgressPublisher
from airflow_vibedream.tasks.records import BatchProgress


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: Any) -> None:
        self.lines.append(message % args)


async def test_a_hanging_publish_never_holds_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    calls: list[dict[str, Any]] = []

    async def hanging(task_instance: Any, key: str, value: Any) -> None:
        calls.append(value)
        started.set()
        await release.wait()

    monkeypatch.setattr(progress_module, "set_xcom_async", hanging)
    monkeypatch.setattr(progress_module, "PUBLISH_EVERY", 0.0)
    publisher = ProgressPublisher(BatchProgress(images=3, jobs=3).to_json(), Log())
    publisher.publish(object(), done=1, failed=0)  # returns at once: nothing awaited
    await asyncio.wait_for(started.wait(), 5)
    publisher.publish(object(), done=2, failed=0)  # one in flight: skipped, not queued
    assert [value["done"] for value in calls] == [1]
    release.set()
    await asyncio.sleep(0)
    await asyncio.gather(*progress_module._IN_FLIGHT)
    publisher.publish(object(), done=3, failed=0)
    await asyncio.gather(*progress_module._IN_FLIGHT)
    assert [value["done"] for value in calls] == [1, 3]


async def test_a_failing_publish_is_said_once_and_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    async def failing(task_instance: Any, key: str, value: Any) -> None:
        raise RuntimeError("no API server here")

    monkeypatch.setattr(progress_module, "set_xcom_async", failing)
    monkeypatch.setattr(progress_module, "PUBLISH_EVERY", 0.0)
    log = Log()
    publisher = ProgressPublisher(BatchProgress(images=1, jobs=1).to_json(), log)
    publisher.publish(object(), done=0, failed=0)
    await asyncio.gather(*progress_module._IN_FLIGHT)
    publisher.publish(object(), done=1, failed=0)
    await asyncio.gather(*progress_module._IN_FLIGHT)
    assert len(log.lines) == 1 and "not published" in log.lines[0]
