"""Waiting in a worker: the operator's wait and the batch's, per prediction, as the triggers wait.

:func:`wait_in_worker` keeps one heap of due polls for every prediction it waits for, sends the due
ones through at most ``concurrency`` threads (one poll each, riding out outages through the
process's gate), and feeds each answer or error to that prediction's
:class:`~airflow_vibedream.waiting.decisions.PredictionWait`: the same decisions, in the same order,
as the triggerer's :class:`~airflow_vibedream.waiting.scheduler.PollScheduler`. A batch of a
thousand images is therefore polled per image on its own learned schedule, not in rounds.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_any
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.constants import DEFAULT_POLL_INTERVAL
from airflow_vibedream.errors import VibeDreamError
from airflow_vibedream.waiting.decisions import Finished, Next, PredictionWait, RereadKey, Retry, Stop
from airflow_vibedream.waiting.gate import OutageReport, poll_client
from airflow_vibedream.waiting.status import StatusTracker

if TYPE_CHECKING:
    from airflow_vibedream.client.sync import VibeDreamClient

#: The longest the loop sleeps without calling ``on_tick`` (progress lines stay current).
TICK_SECONDS = 1.0

#: How a wait ended: the terminal prediction, or the error that stopped it (the deadline's
#: :class:`VibeDreamTimeoutError`, a 404, a refused key).
Outcome = Prediction | VibeDreamError


class _Inline:
    """Runs each poll in the calling thread: one wait needs no thread of its own."""

    def submit(self, fn: Callable[..., Prediction], *args: Any, **kwargs: Any) -> Future[Prediction]:
        future: Future[Prediction] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # what the poll raised is the wait's to decide, as from a thread
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class _KeyRereads:
    """One connection re-read for every wait of the loop: the first refusal reads it, the others
    share what it found."""

    def __init__(self, reread: Callable[[], VibeDreamClient | None] | None) -> None:
        self._reread = reread
        self.changed: bool | None = None
        self.client: VibeDreamClient | None = None

    def __call__(self) -> bool:
        if self.changed is None:
            self.client = self._reread() if self._reread is not None else None
            self.changed = self.client is not None
        return self.changed


@dataclass
class WorkerHooks:
    """What a worker's wait tells its caller, and how it re-reads a refused key.

    :param on_over: told of each wait as it ends (it may raise to stop every wait: a batch fails fast).
    :param observe: called with every answer (status-change logging).
    :param on_tick: called at least every :data:`TICK_SECONDS` (progress lines).
    :param on_unavailable: told of an outage while polling (throttled).
    :param reread: after a refused key, reads the connection again: a new client if its settings
        changed, else None. Without it a refusal ends the wait.
    """

    on_over: Callable[[PredictionWait, Outcome], None] | None = None
    observe: Callable[[Prediction], Any] | None = None
    on_tick: Callable[[], None] | None = None
    on_unavailable: OutageReport | None = None
    reread: Callable[[], VibeDreamClient | None] | None = None


class _WorkerLoop:
    """One heap of due polls, at most ``concurrency`` in flight; every answer to its wait's decision."""

    def __init__(
        self, client: VibeDreamClient, concurrency: int, hooks: WorkerHooks, clock: Callable[[], float]
    ) -> None:
        self.client = client
        self.concurrency = concurrency
        self.hooks = hooks
        self.clock = clock
        self.keys = _KeyRereads(hooks.reread)
        self.outcomes: dict[str, Outcome] = {}
        self.due: list[tuple[float, int, PredictionWait]] = []
        self.order = itertools.count()
        self.in_flight: dict[Future[Prediction], PredictionWait] = {}
        self.pool: ThreadPoolExecutor | _Inline = (
            ThreadPoolExecutor(concurrency, thread_name_prefix="vibedream-poll")
            if concurrency > 1
            else _Inline()
        )

    def run(self, waits: list[PredictionWait]) -> dict[str, Outcome]:
        now = self.clock()
        for wait in waits:
            self.push(wait, now + wait.first(now).seconds)
        try:
            while self.due or self.in_flight:
                self.send_due(self.clock())
                for future in self.answered():
                    self.read(future)
                if self.hooks.on_tick is not None:
                    self.hooks.on_tick()
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
        return self.outcomes

    def push(self, wait: PredictionWait, due: float) -> None:
        heapq.heappush(self.due, (due, next(self.order), wait))

    def send_due(self, now: float) -> None:
        """Every poll that is due, while there is room (a wait past its deadline ends instead)."""
        while self.due and self.due[0][0] <= now and len(self.in_flight) < self.concurrency:
            wait = heapq.heappop(self.due)[2]
            expired = wait.expired(now)
            if expired is not None:
                self.over(wait, expired.error)
                continue
            client = self.keys.client or self.client
            future = self.pool.submit(poll_client, client, wait, on_unavailable=self.hooks.on_unavailable)
            self.in_flight[future] = wait

    def answered(self) -> set[Future[Prediction]]:
        """The polls that came back, after waiting (at most until the next is due, or a tick) if none."""
        finished = {future for future in self.in_flight if future.done()}
        if finished:
            return finished
        sleep = TICK_SECONDS
        if self.due and len(self.in_flight) < self.concurrency:
            sleep = min(sleep, max(0.0, self.due[0][0] - self.clock()))
        if self.in_flight and isinstance(self.pool, ThreadPoolExecutor):
            return wait_for_any(self.in_flight, timeout=sleep, return_when=FIRST_COMPLETED).done
        time.sleep(sleep)
        return set()

    def read(self, future: Future[Prediction]) -> None:
        """One poll's answer or error, to its wait's decision."""
        wait = self.in_flight.pop(future)
        now = self.clock()
        error = future.exception()
        if error is None:
            prediction = future.result()
            decision = wait.answered(prediction, now)
            if self.hooks.observe is not None and not isinstance(decision, Retry):
                self.hooks.observe(prediction)  # only an answer the wait accepted is reported
            self.then(wait, decision, now)
        elif isinstance(error, VibeDreamError):
            failed = wait.failed(error, now, (self.keys.client or self.client).settings.retry)
            if isinstance(failed, RereadKey):
                self.then(wait, wait.key_reread(self.keys(), failed.refusal, now), now)
            else:
                self.then(wait, failed, now)
        else:
            raise error

    def then(self, wait: PredictionWait, decision: Next, now: float) -> None:
        if isinstance(decision, Finished):
            self.over(wait, decision.prediction)
        elif isinstance(decision, Stop):
            self.over(wait, decision.error)
        else:
            self.push(wait, now + decision.seconds)

    def over(self, wait: PredictionWait, outcome: Outcome) -> None:
        self.outcomes[wait.prediction_id] = outcome
        if self.hooks.on_over is not None:
            self.hooks.on_over(wait, outcome)


def wait_in_worker(
    client: VibeDreamClient,
    waits: list[PredictionWait],
    *,
    concurrency: int = 1,
    hooks: WorkerHooks | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, Outcome]:
    """Wait for every prediction of ``waits``: each one's outcome, by prediction id.

    :param client: the client to poll with.
    :param concurrency: polls in flight at most (threads); 1 polls in the calling thread.
    :param hooks: what the caller is told as the waits go on, and how a refused key is re-read.
    :param clock: epoch seconds (the deadlines' clock).
    """
    return _WorkerLoop(client, concurrency, hooks or WorkerHooks(), clock).run(waits)


def wait_for_prediction(
    client: VibeDreamClient,
    prediction_id: str,
    *,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    deadline: float | None = None,
    kind: str = "default",
    created_at: float | None = None,
    on_status_change: Callable[[Prediction, float], None] | None = None,
    on_unavailable: OutageReport | None = None,
    reread: Callable[[], VibeDreamClient | None] | None = None,
    model_id: str | None = None,
    large_answers: bool = True,
) -> Prediction:
    """Poll one prediction with ``client`` until it is terminal, riding out outages; raise
    :class:`~airflow_vibedream.errors.VibeDreamTimeoutError` at ``deadline`` (epoch seconds). Returns
    the terminal prediction, failed or not. The same decisions as the triggers' wait
    (:mod:`airflow_vibedream.waiting.decisions`), in the calling thread.

    :param client: the blocking client.
    :param prediction_id: the prediction.
    :param poll_interval: seconds between polls where jobs of its kind finish.
    :param deadline: epoch seconds (None: none).
    :param kind: what kind of job (model and resolution): when to poll is learned per kind.
    :param created_at: the job's creation, epoch seconds, if known.
    :param on_status_change: called with each new status and the seconds waited.
    :param on_unavailable: called while the API is unavailable.
    :param reread: after a refused key, a client of the re-read connection if it changed (else
        None); without it a refusal is final.
    :param model_id: the model the prediction was asked of, if known (an answer naming another
        model, or another prediction, is never adopted).
    :param large_answers: base64 outputs may have been asked (the final answer then carries the
        images); False reads a status answer's size at most.
    """
    wait = PredictionWait(
        prediction_id,
        interval=poll_interval,
        deadline=deadline,
        kind=kind,
        created_at=created_at,
        model_id=model_id,
        large_answers=large_answers,
    )
    hooks = WorkerHooks(
        observe=StatusTracker(on_status_change).observe, on_unavailable=on_unavailable, reread=reread
    )
    outcome = wait_in_worker(client, [wait], hooks=hooks)[prediction_id]
    if isinstance(outcome, VibeDreamError):
        raise outcome
    return outcome
