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
from typing import TYPE_CHECKING, Any

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.errors import VibeDreamError
from airflow_vibedream.waiting.decisions import Finished, Next, PredictionWait, RereadKey, Stop
from airflow_vibedream.waiting.gate import OutageReport, poll_client

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


def wait_in_worker(
    client: VibeDreamClient,
    waits: list[PredictionWait],
    *,
    concurrency: int = 1,
    on_over: Callable[[PredictionWait, Outcome], None] | None = None,
    observe: Callable[[Prediction], Any] | None = None,
    on_tick: Callable[[], None] | None = None,
    on_unavailable: OutageReport | None = None,
    reread: Callable[[], VibeDreamClient | None] | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, Outcome]:
    """Wait for every prediction of ``waits``: each one's outcome, by prediction id.

    :param client: the client to poll with.
    :param concurrency: polls in flight at most (threads); 1 polls in the calling thread.
    :param on_over: told of each wait as it ends (it may raise to stop every wait: a batch fails fast).
    :param observe: called with every answer (status-change logging).
    :param on_tick: called at least every :data:`TICK_SECONDS` (progress lines).
    :param on_unavailable: told of an outage while polling (throttled).
    :param reread: after a refused key, reads the connection again: a new client if its settings
        changed, else None. Without it a refusal ends the wait.
    :param clock: epoch seconds (the deadlines' clock).
    """
    keys = _KeyRereads(reread)
    outcomes: dict[str, Outcome] = {}
    due: list[tuple[float, int, PredictionWait]] = []
    order = itertools.count()
    now = clock()
    for wait in waits:
        heapq.heappush(due, (now + wait.first(now).seconds, next(order), wait))
    pool: ThreadPoolExecutor | _Inline = (
        ThreadPoolExecutor(concurrency, thread_name_prefix="vibedream-poll") if concurrency > 1 else _Inline()
    )
    in_flight: dict[Future[Prediction], PredictionWait] = {}

    def over(wait: PredictionWait, outcome: Outcome) -> None:
        outcomes[wait.prediction_id] = outcome
        if on_over is not None:
            on_over(wait, outcome)

    def then(wait: PredictionWait, decision: Next, now: float) -> None:
        if isinstance(decision, Finished):
            over(wait, decision.prediction)
        elif isinstance(decision, Stop):
            over(wait, decision.error)
        else:
            heapq.heappush(due, (now + decision.seconds, next(order), wait))

    try:
        while due or in_flight:
            now = clock()
            while due and due[0][0] <= now and len(in_flight) < concurrency:
                wait = heapq.heappop(due)[2]
                expired = wait.expired(now)
                if expired is not None:
                    over(wait, expired.error)
                    continue
                current = keys.client or client
                in_flight[pool.submit(poll_client, current, wait, on_unavailable=on_unavailable)] = wait
            sleep = TICK_SECONDS
            if due and len(in_flight) < concurrency:
                sleep = min(sleep, max(0.0, due[0][0] - now))
            finished: set[Future[Prediction]] = {f for f in in_flight if f.done()}
            if not finished:
                if in_flight and isinstance(pool, ThreadPoolExecutor):
                    finished = wait_for_any(in_flight, timeout=sleep, return_when=FIRST_COMPLETED).done
                else:
                    time.sleep(sleep)
            for future in finished:
                wait = in_flight.pop(future)
                now = clock()
                error = future.exception()
                if error is None:
                    prediction = future.result()
                    if observe is not None:
                        observe(prediction)
                    then(wait, wait.answered(prediction, now), now)
                elif isinstance(error, VibeDreamError):
                    failed = wait.failed(error, now, (keys.client or client).settings.retry)
                    if isinstance(failed, RereadKey):
                        then(wait, wait.key_reread(keys(), failed.refusal, now), now)
                    else:
                        then(wait, failed, now)
                else:
                    raise error
            if on_tick is not None:
                on_tick()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return outcomes
