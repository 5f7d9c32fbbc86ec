"""The four loops that wait for a prediction agree: the prediction trigger and the batch trigger (the
triggerer's poll scheduler), the operator and the batch waiting in their worker (the worker's wait),
given the same scripted answers by the emulator over real HTTP, end the same way, because all four
feed the same decision object (airflow_vibedream/waiting/decisions.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from logging import getLogger
from typing import Any

import pytest

from airflow_vibedream.client import ClientSettings, UpscaleRequest, VibeDreamClient
from airflow_vibedream.emulator import EmulatorConfig, EmulatorServer
from airflow_vibedream.errors import (
    VibeDreamAuthError,
    VibeDreamError,
    VibeDreamNotFoundError,
    VibeDreamTimeoutError,
)
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.tasks.batch_wait import WorkerWait, wait_for_batch_in_worker
from airflow_vibedream.triggers.vibedream import VibeDreamBatchTrigger, VibeDreamPredictionTrigger
from airflow_vibedream.waiting.blocking import wait_for_prediction
from tests.conftest import TEST_KEY, connection_json, emulator_stats
from tests.integration.emulated import faults, fire

INTERVAL = 0.1
DEADLINE = 1.5  # seconds: the stuck job's wait ends then

#: Scenario: (faults set after the submit, the outcome every loop must reach).
SCENARIOS: dict[str, tuple[list[dict[str, Any]], str]] = {
    "completes": ([], "completed"),
    "ends failed": ([{"route": "submit", "kind": "fail_prediction"}], "failed"),
    "rides out 503s": ([{"route": "poll", "kind": "status", "status": 503, "times": 3}], "completed"),
    "rides out an unreadable answer": ([{"route": "poll", "kind": "garbage", "times": 2}], "completed"),
    "key refused, connection unchanged": ([{"route": "poll", "kind": "status", "status": 401}], "refused"),
    "gone": ([{"route": "poll", "kind": "status", "status": 404}], "gone"),
    "never finishes": ([{"route": "submit", "kind": "stuck"}], "timeout"),
    # A confused API, a caching proxy or a redirect to another service: every poll answered
    # "completed" for another prediction (or for this one, by another model). Never a result.
    "answers carry another id": ([{"route": "poll", "kind": "other_answer"}], "timeout"),
    "answers name another model": (
        [{"route": "poll", "kind": "other_answer", "answer_id": "<pid>", "answer_model": "face-swap"}],
        "timeout",
    ),
}
#: The model every loop is told it asked (the emulator's).
MODEL = "image-upscaler"


#: What the loop said of how it ended (an event's message, an error's text).
SAID: list[str] = []


def named(error: BaseException) -> str:
    if isinstance(error, VibeDreamTimeoutError):
        return "timeout"
    if isinstance(error, VibeDreamAuthError):
        return "refused"
    if isinstance(error, VibeDreamNotFoundError):
        return "gone"
    raise AssertionError(f"an unexpected end: {error!r}")


def from_event_error(event: dict[str, Any]) -> str:
    return {"VibeDreamAuthError": "refused", "VibeDreamNotFoundError": "gone"}[event["error_type"]]


async def trigger_loop(pid: str, deadline: float) -> str:
    event = await fire(
        VibeDreamPredictionTrigger(pid, poll_interval=INTERVAL, end_time=deadline, model_id=MODEL)
    )
    if event["status"] == "success":
        return "completed"
    if event["status"] in ("failed", "timeout"):
        SAID.append(str(event["message"]))
        return str(event["status"])
    return from_event_error(event)


async def batch_trigger_loop(pid: str, deadline: float) -> str:
    event = await fire(
        VibeDreamBatchTrigger([pid], poll_interval=INTERVAL, end_time=deadline, model_id=MODEL)
    )
    if event["status"] == "timeout" and event["pending"] == [pid]:
        return "timeout"
    if event["status"] == "error":
        return from_event_error(event)
    if pid in event["failed"]:  # a 404 fails that image only: it is gone
        return "gone" if "HTTP 404" in event["failed"][pid] else "failed"
    return "completed"


def worker_loop(pid: str, deadline: float) -> str:
    hook = VibeDreamHook()
    try:
        done = wait_for_prediction(
            hook.get_client(),
            pid,
            poll_interval=INTERVAL,
            deadline=deadline,
            reread=hook.reread_client,
            model_id=MODEL,
        )
    except VibeDreamError as exc:
        SAID.append(str(exc))
        return named(exc)
    return "completed" if done.succeeded else "failed"


def batch_worker_loop(pid: str, deadline: float) -> str:
    hook = VibeDreamHook()
    how = WorkerWait(
        deadline=deadline, interval=INTERVAL, kind="k", concurrency=4, progress_interval=30, model_id=MODEL
    )
    try:
        outcome = wait_for_batch_in_worker(
            hook.get_client(), [pid], how, log=getLogger("test"), reread=hook.reread_client
        )
    except VibeDreamError as exc:
        return named(exc)
    state, error = outcome[pid]
    if state == "pending":
        return "timeout"
    if state == "failed":
        return "gone" if error and "HTTP 404" in error else "failed"
    return "completed"


LOOPS: dict[str, Callable[[str, float], Any]] = {
    "prediction trigger": trigger_loop,
    "batch trigger": batch_trigger_loop,
    "operator in its worker": worker_loop,
    "batch in its worker": batch_worker_loop,
}


@pytest.fixture(scope="module")
def quick_emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=TEST_KEY, processing_seconds=0.3)) as server:
        yield server


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("loop", LOOPS)
async def test_the_four_loops_end_alike(
    quick_emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    scenario: str,
    loop: str,
) -> None:
    # Short back-offs, so three transient failures in a row fit well inside the deadline.
    connection = connection_json(quick_emulator.base_url, initial_backoff=0.05, max_backoff=0.1)
    monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection)
    rules, expected = SCENARIOS[scenario]
    faults(quick_emulator, *[rule for rule in rules if rule["route"] == "submit"])
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=quick_emulator.base_url))
    pid = client.upscale(UpscaleRequest(f"{quick_emulator.base_url}/samples/64x48.png", "2k", "jpeg")).id
    poll_rules = [rule for rule in rules if rule["route"] == "poll"]
    faults(quick_emulator, *[{k: pid if v == "<pid>" else v for k, v in r.items()} for r in poll_rules])
    SAID.clear()
    caplog.set_level("WARNING")
    polls_before = emulator_stats(quick_emulator.base_url).get("polls", 0)
    started = time.time()
    try:
        run = LOOPS[loop](pid, started + DEADLINE)
        outcome = await run if not isinstance(run, str) else run
    finally:
        faults(quick_emulator)
    assert outcome == expected
    polls = emulator_stats(quick_emulator.base_url).get("polls", 0) - polls_before
    if scenario.startswith("rides out"):  # every fault was met, then answered
        assert polls >= rules[0]["times"] + 1
    if scenario == "key refused, connection unchanged":  # one poll, one re-read, no second try
        assert polls == 1
    if expected == "timeout":
        assert time.time() - started >= DEADLINE
    if scenario.startswith("answers"):  # polled until the deadline, the mismatch said, never adopted
        assert polls >= 2
        answered = "face-swap" if "model" in scenario else "00000000-0000-4000-8000-000000000000"
        # The triggers log through Airflow's structlog (to stdout), the worker loops through logging.
        told = " ".join([*SAID, caplog.text, capsys.readouterr().out])
        assert answered in told and pid in told, told
