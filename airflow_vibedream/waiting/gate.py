"""Riding out API outages: one shared gate per event loop (and per worker process) for every poller.

Polls are idempotent GETs, so a transient failure (429, 5xx, network) is retried until the waiting
task's own deadline, never for a fixed count. But a thousand triggers retrying each on their own
would hammer an API that is down, and all at once the moment it returns. So every poller of one
API on one event loop shares an :class:`OutageGate`, a circuit breaker:

- *closed*: polls go out. ``failure_threshold`` transient failures in a row (from any poller)
  open it;
- *open*: nobody polls. After a capped, jittered backoff (never sooner than a ``Retry-After``) the
  first poller to ask becomes the one *probe* (half-open); everyone else keeps waiting;
- the probe succeeds: closed again, and the waiters resume spread over their own poll interval
  (jitter), so the API is not hit by all of them in the same instant; the probe fails: open again,
  with a longer backoff.

Nobody waits past its own deadline: a waiter leaves the gate at its deadline and reports a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.settings import RetryPolicy
from airflow_vibedream.errors import VibeDreamAnswerMismatchError, VibeDreamError
from airflow_vibedream.waiting.decisions import PredictionWait, Retry, Stop, worth_waiting_for
from airflow_vibedream.waiting.gate_core import CLOSED, GateCore
from airflow_vibedream.waiting.loop_local import loop_local

__all__ = [
    "CLOSED",
    "AsyncOutageGate",
    "GateCore",
    "ThreadOutageGate",
    "loop_gate",
    "poll_client",
    "poll_client_async",
    "process_gate",
]

if TYPE_CHECKING:
    from airflow_vibedream.client.aio import AsyncVibeDreamClient
    from airflow_vibedream.client.sync import VibeDreamClient

T = TypeVar("T")

#: Seconds between "API unavailable" lines of one poller.
OUTAGE_LOG_INTERVAL = 30.0


class AsyncOutageGate:
    """The gate of one API on one event loop.

    :param core: the decisions (a fresh :class:`GateCore` by default).
    """

    def __init__(self, core: GateCore | None = None) -> None:
        self.core = core or GateCore()
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        # Wake every waiter, then arm a new event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    async def enter(self, deadline: float | None, resume_within: float) -> tuple[bool, object | None]:
        """Wait for a turn: (True, probe token or None), or (False, None) at the deadline."""
        waited = False
        while True:
            allowed, probe = self.core.try_enter()
            if allowed:
                if waited and probe is None and resume_within > 0:
                    # The gate just closed: resume spread over one interval, not all at once.
                    await asyncio.sleep(_capped(random.uniform(0, resume_within), deadline) or 0.0)
                return True, probe
            waited = True
            timeout = _capped(self.core.seconds_to_probe(), deadline)
            if deadline is not None and time.time() >= deadline:
                return False, None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def succeeded(self) -> None:
        if self.core.succeeded():
            self._notify()

    def failed(self, exc: BaseException, probe: object | None) -> None:
        if self.core.failed(exc, probe):
            self._notify()

    def released(self, probe: object | None) -> None:
        if self.core.released(probe):
            self._notify()


class ThreadOutageGate:
    """The gate of one API in one worker process (its polling threads share it)."""

    def __init__(self, core: GateCore | None = None) -> None:
        self.core = core or GateCore()
        self._condition = threading.Condition()

    def enter(self, deadline: float | None, resume_within: float) -> tuple[bool, object | None]:
        waited = False
        with self._condition:
            while True:
                allowed, probe = self.core.try_enter()
                if allowed:
                    break
                waited = True
                if deadline is not None and time.time() >= deadline:
                    return False, None
                self._condition.wait(_capped(self.core.seconds_to_probe(), deadline))
        if waited and probe is None and resume_within > 0:
            time.sleep(_capped(random.uniform(0, resume_within), deadline) or 0.0)
        return True, probe

    def succeeded(self) -> None:
        with self._condition:
            if self.core.succeeded():
                self._condition.notify_all()

    def failed(self, exc: BaseException, probe: object | None) -> None:
        with self._condition:
            if self.core.failed(exc, probe):
                self._condition.notify_all()

    def released(self, probe: object | None) -> None:
        with self._condition:
            if self.core.released(probe):
                self._condition.notify_all()


def _capped(seconds: float | None, deadline: float | None) -> float | None:
    """``seconds`` (None: no limit of its own), never past the wall-clock ``deadline``."""
    if deadline is None:
        return seconds
    remaining = max(0.0, deadline - time.time())
    return remaining if seconds is None else min(seconds, remaining)


# -- one gate per API per event loop / per process ------------------------------------------------------

_PROCESS_GATES: dict[str, ThreadOutageGate] = {}
_PROCESS_GATES_LOCK = threading.Lock()


def loop_gate(base_url: str) -> AsyncOutageGate:
    """The gate of the API at ``base_url`` on the running event loop (kept by its :class:`LoopLocal`)."""
    gates: dict[str, AsyncOutageGate] = loop_local().gates
    gate = gates.get(base_url)
    if gate is None:
        gate = gates[base_url] = AsyncOutageGate()
    return gate


def process_gate(base_url: str) -> ThreadOutageGate:
    """The gate of the API at ``base_url`` in this process."""
    with _PROCESS_GATES_LOCK:
        gate = _PROCESS_GATES.get(base_url)
        if gate is None:
            gate = _PROCESS_GATES[base_url] = ThreadOutageGate()
        return gate


# -- the patient poll: the same shape for the async and the sync clients --------------------------------

OutageReport = Callable[[float, VibeDreamError], None]


class _Outage:
    """One poller's reports during a run of transient failures: the poll window hears of each, the
    log of the outage at most every ``OUTAGE_LOG_INTERVAL``. Made on the first failure only: nearly
    every poll needs none."""

    def __init__(
        self, on_unavailable: OutageReport | None, on_transient: Callable[[VibeDreamError], None] | None
    ) -> None:
        self.on_unavailable = on_unavailable
        self.on_transient = on_transient
        self.last_report: float | None = None

    def heard(self, exc: VibeDreamError, core: GateCore) -> None:
        if self.on_transient is not None:
            self.on_transient(exc)
        now = time.monotonic()
        if self.on_unavailable is not None and (
            self.last_report is None or now - self.last_report >= OUTAGE_LOG_INTERVAL
        ):
            self.last_report = now
            self.on_unavailable(core.unavailable_for(), exc)


# The patient poll's steps, shared by the async and the blocking twin below so they cannot drift: the
# twins differ only in how they wait (await or block). What to do after a failure is the wait's
# decision (:meth:`PredictionWait.failed`); the gate only hears of it.


def _before_poll(wait: PredictionWait) -> None:
    expired = wait.expired(time.time())
    if expired is not None:
        raise expired.error


def _pause_after(
    exc: VibeDreamError,
    wait: PredictionWait,
    gate: AsyncOutageGate | ThreadOutageGate,
    probe: object | None,
    policy: RetryPolicy,
) -> float:
    """After a failed poll: the pause before the next try (a transient failure, counted by the gate),
    or raises (an error that waiting cannot fix is the driver's to decide; the deadline ends it)."""
    if not worth_waiting_for(policy, exc):
        gate.released(probe)
        raise exc
    if isinstance(exc, VibeDreamAnswerMismatchError):
        _answered(gate, probe)  # the API answers (for another job): no outage for the other waits
    else:
        gate.failed(exc, probe)
    decision = wait.failed(exc, time.time(), policy)
    if isinstance(decision, Stop):
        raise decision.error from exc
    assert isinstance(decision, Retry)  # a transient error is retried or ends at the deadline
    return decision.seconds


def _answered(gate: AsyncOutageGate | ThreadOutageGate, probe: object | None) -> None:
    # Only a probe or the end of a run of failures changes the gate: the hot path takes no lock.
    if probe is not None or gate.core.consecutive_failures:
        gate.succeeded()


async def poll_patiently_async(
    poll: Callable[[], Awaitable[T]],
    *,
    gate: AsyncOutageGate,
    wait: PredictionWait,
    policy: RetryPolicy,
    on_unavailable: OutageReport | None = None,
    on_transient: Callable[[VibeDreamError], None] | None = None,
) -> T:
    """``poll()`` until it answers: transient failures are retried (after the wait's back-off) until
    its deadline (then :class:`VibeDreamTimeoutError`), through ``gate``; any other error is raised
    at once. ``on_transient`` hears of each transient failure (the poll window shrinks on them)."""
    outage: _Outage | None = None
    while True:
        _before_poll(wait)
        probe = None
        if gate.core.state != CLOSED:  # the hot path: no coroutine for the gate while the API answers
            allowed, probe = await gate.enter(wait.deadline, wait.interval)
            if not allowed:
                continue  # the deadline came while waiting at the gate
        try:
            answer = await poll()
        except VibeDreamError as exc:
            pause = _pause_after(exc, wait, gate, probe, policy)
            outage = outage or _Outage(on_unavailable, on_transient)
            outage.heard(exc, gate.core)
            await asyncio.sleep(pause)
            continue
        except BaseException:
            gate.released(probe)
            raise
        _answered(gate, probe)
        return answer


def poll_patiently(
    poll: Callable[[], T],
    *,
    gate: ThreadOutageGate,
    wait: PredictionWait,
    policy: RetryPolicy,
    on_unavailable: OutageReport | None = None,
    on_transient: Callable[[VibeDreamError], None] | None = None,
) -> T:
    """The blocking twin of :func:`poll_patiently_async` (the same decisions, line for line)."""
    outage: _Outage | None = None
    while True:
        _before_poll(wait)
        probe = None
        if gate.core.state != CLOSED:  # a plain read: the gate's lock is taken only to change it
            allowed, probe = gate.enter(wait.deadline, wait.interval)
            if not allowed:
                continue
        try:
            answer = poll()
        except VibeDreamError as exc:
            pause = _pause_after(exc, wait, gate, probe, policy)
            outage = outage or _Outage(on_unavailable, on_transient)
            outage.heard(exc, gate.core)
            time.sleep(pause)
            continue
        except BaseException:
            gate.released(probe)
            raise
        _answered(gate, probe)
        return answer


# -- one poll of a client, patiently ------------------------------------------------------------------


def poll_options(wait: PredictionWait) -> dict[str, Any]:
    """How one poll of ``wait`` is made: once (the patient poll retries), for its model only, a status
    answer's size unless base64 outputs may come, and never read past the wait's deadline."""
    return {
        "retry": False,
        "model_id": wait.model_id,
        "status_only": not wait.large_answers,
        "until": wait.deadline,
    }


async def poll_client_async(
    client: AsyncVibeDreamClient,
    wait: PredictionWait,
    *,
    on_unavailable: OutageReport | None = None,
    on_transient: Callable[[VibeDreamError], None] | None = None,
) -> Prediction:
    """Poll ``wait``'s prediction once with ``client``, riding out transient failures until its
    deadline through the loop's shared gate of the client's API."""
    client.hold()  # held across an outage's waits, so a retirement (a rotated key) waits for it
    try:
        return await poll_patiently_async(
            lambda: client.get_prediction(wait.prediction_id, **poll_options(wait)),
            gate=loop_gate(client.settings.base_url),
            wait=wait,
            policy=client.settings.retry,
            on_unavailable=on_unavailable,
            on_transient=on_transient,
        )
    finally:
        client.release()


def poll_client(
    client: VibeDreamClient, wait: PredictionWait, *, on_unavailable: OutageReport | None = None
) -> Prediction:
    """The blocking twin of :func:`poll_client_async`, through the process's gate of the API."""
    return poll_patiently(
        lambda: client.get_prediction(wait.prediction_id, **poll_options(wait)),
        gate=process_gate(client.settings.base_url),
        wait=wait,
        policy=client.settings.retry,
        on_unavailable=on_unavailable,
    )
