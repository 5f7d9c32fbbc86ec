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
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from airflow_vibedream.client.calls import deadline_reached
from airflow_vibedream.client.settings import RetryPolicy
from airflow_vibedream.errors import VibeDreamError, VibeDreamProtocolError
from airflow_vibedream.waiting.gate_core import CLOSED, GateCore

__all__ = ["CLOSED", "AsyncOutageGate", "GateCore", "ThreadOutageGate", "loop_gate", "process_gate"]

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

#: Per loop (by id, with a weak reference to tell a reused id from the same loop: a
#: WeakKeyDictionary would create a weak reference on every lookup, i.e. on every poll).
_LOOP_GATES: dict[int, tuple[weakref.ref[asyncio.AbstractEventLoop], dict[str, AsyncOutageGate]]] = {}
_PROCESS_GATES: dict[str, ThreadOutageGate] = {}
_PROCESS_GATES_LOCK = threading.Lock()


def loop_gate(base_url: str) -> AsyncOutageGate:
    """The gate of the API at ``base_url`` on the running event loop (it holds no loop reference)."""
    loop = asyncio.get_running_loop()
    entry = _LOOP_GATES.get(id(loop))
    if entry is None or entry[0]() is not loop:
        for key in [key for key, (ref, _) in _LOOP_GATES.items() if ref() is None]:
            del _LOOP_GATES[key]  # loops that are gone
        entry = _LOOP_GATES[id(loop)] = (weakref.ref(loop), {})
    gates = entry[1]
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


def worth_waiting_for(policy: RetryPolicy, exc: VibeDreamError) -> bool:
    """Transient for a poll: what the policy retries, and an unreadable answer (a proxy's error page
    now is no reason to give up on a job that is running and billed)."""
    return policy.is_retryable(exc) or isinstance(exc, VibeDreamProtocolError)


@dataclass
class _Patience:
    """One poller's retry state after its first transient failure: its backoff, and when it last said
    the API is down. Made on the first failure only: nearly every poll needs none."""

    deadline: float | None
    policy: RetryPolicy
    on_unavailable: OutageReport | None
    on_transient: Callable[[VibeDreamError], None] | None
    attempt: int = 0
    last_report: float | None = None

    def after_failure(self, exc: VibeDreamError, core: GateCore) -> float:
        """The pause before this poller tries again (capped by its deadline); reports the outage."""
        if self.on_transient is not None:
            self.on_transient(exc)
        self.attempt += 1
        down = core.unavailable_for()
        now = time.monotonic()
        if self.on_unavailable is not None and (
            self.last_report is None or now - self.last_report >= OUTAGE_LOG_INTERVAL
        ):
            self.last_report = now
            self.on_unavailable(down, exc)
        return _capped(self.policy.backoff(self.attempt, exc), self.deadline) or 0.0


# The decisions of a patient poll, shared by the async and the blocking twin below so they cannot
# drift: the twins differ only in how they wait (await or block).


def _check_deadline(prediction_id: str, deadline: float | None) -> None:
    if deadline is not None and time.time() >= deadline:
        raise deadline_reached(prediction_id, deadline)


def _gives_up(
    exc: VibeDreamError, gate: AsyncOutageGate | ThreadOutageGate, probe: object | None, policy: RetryPolicy
) -> bool:
    """After a failed poll: True when waiting cannot fix it (the caller raises); else the gate
    counts the failure (and the caller pauses)."""
    if not worth_waiting_for(policy, exc):
        gate.released(probe)
        return True
    gate.failed(exc, probe)
    return False


def _answered(gate: AsyncOutageGate | ThreadOutageGate, probe: object | None) -> None:
    # Only a probe or the end of a run of failures changes the gate: the hot path takes no lock.
    if probe is not None or gate.core.consecutive_failures:
        gate.succeeded()


async def poll_patiently_async(
    poll: Callable[[], Awaitable[T]],
    *,
    gate: AsyncOutageGate,
    prediction_id: str,
    deadline: float | None,
    policy: RetryPolicy,
    resume_within: float,
    on_unavailable: OutageReport | None = None,
    on_transient: Callable[[VibeDreamError], None] | None = None,
) -> T:
    """``poll()`` until it answers: transient failures are retried until ``deadline`` (then
    :class:`VibeDreamTimeoutError`), through ``gate``; any other error is raised at once.
    ``on_transient`` hears of each transient failure (the poll window shrinks on them)."""
    patience: _Patience | None = None
    while True:
        _check_deadline(prediction_id, deadline)
        probe = None
        if gate.core.state != CLOSED:  # the hot path: no coroutine for the gate while the API answers
            allowed, probe = await gate.enter(deadline, resume_within)
            if not allowed:
                continue  # the deadline came while waiting at the gate
        try:
            answer = await poll()
        except VibeDreamError as exc:
            if _gives_up(exc, gate, probe, policy):
                raise
            patience = patience or _Patience(deadline, policy, on_unavailable, on_transient)
            await asyncio.sleep(patience.after_failure(exc, gate.core))
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
    prediction_id: str,
    deadline: float | None,
    policy: RetryPolicy,
    resume_within: float,
    on_unavailable: OutageReport | None = None,
    on_transient: Callable[[VibeDreamError], None] | None = None,
) -> T:
    """The blocking twin of :func:`poll_patiently_async` (the same decisions, line for line)."""
    patience: _Patience | None = None
    while True:
        _check_deadline(prediction_id, deadline)
        probe = None
        if gate.core.state != CLOSED:  # a plain read: the gate's lock is taken only to change it
            allowed, probe = gate.enter(deadline, resume_within)
            if not allowed:
                continue
        try:
            answer = poll()
        except VibeDreamError as exc:
            if _gives_up(exc, gate, probe, policy):
                raise
            patience = patience or _Patience(deadline, policy, on_unavailable, on_transient)
            time.sleep(patience.after_failure(exc, gate.core))
            continue
        except BaseException:
            gate.released(probe)
            raise
        _answered(gate, probe)
        return answer
