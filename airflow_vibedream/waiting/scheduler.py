"""One poll scheduler per event loop (and connection): it owns every prediction every trigger on the
loop waits for.

A waiting trigger awaits one future; the scheduler keeps a heap of due times, sends the due polls
through a bounded set of workers (one connection pool, one outage gate: :mod:`.gate`), and resolves
each future once with the terminal answer, or with the error that ended the wait. So ten thousand
waiting tasks cost ten thousand heap entries and futures, not ten thousand timers, retry wrappers
and sleeping coroutines. How many polls are in flight at once follows the API
(:class:`~airflow_vibedream.waiting.window.PollWindow`): more while due polls wait and the API
answers fast and clean, fewer when it answers with errors or slower than it did, never more than
the connection's ``max_polls_in_flight`` however many come due together.

Fairness: the heap pops the earliest due poll first, so a job is polled when its own schedule says
(a later-added or faster-polled job never overtakes it); while the window is full, due polls wait
in due order. When to poll, and what each answer or error means, is each prediction's
:class:`~.decisions.PredictionWait` (the same decisions as the worker's :mod:`.blocking` wait).

A trigger that is cancelled (task cleared, triggerer shutting down) leaves nothing: its entry is
dropped (eagerly once dead entries are half the heap), and a scheduler with nothing left to watch
stops its workers and removes itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.settings import RetryPolicy
from airflow_vibedream.errors import VibeDreamError
from airflow_vibedream.waiting.decisions import Finished, Next, PredictionWait, RereadKey, Retry, Stop
from airflow_vibedream.waiting.gate import OutageReport, poll_client_async
from airflow_vibedream.waiting.loop_local import loop_local
from airflow_vibedream.waiting.window import PollWindow

if TYPE_CHECKING:
    from airflow_vibedream.client.aio import AsyncVibeDreamClient


class Watch:
    """One prediction being waited for (slots: ten thousand of them stay small).

    ``context`` is the waiting trigger's own (copied when it started waiting): what the wait tells
    its trigger (status lines, outages, a key re-read) runs in it, so Airflow's triggerer files each
    line under that trigger's task. The pollers run in no trigger's context: otherwise every line
    would land in the log of whichever trigger happened to start the poller, another task's (and,
    with teams, another team's).
    """

    __slots__ = ("context", "future", "observe", "on_unavailable", "reread", "wait")

    def __init__(
        self,
        wait: PredictionWait,
        future: asyncio.Future[Prediction],
        observe: Callable[[Prediction], Any] | None,
        on_unavailable: OutageReport | None,
        reread: Callable[[], Awaitable[bool]] | None,
    ) -> None:
        self.wait = wait
        self.future = future
        self.observe = observe
        self.on_unavailable = on_unavailable
        self.reread = reread
        self.context = contextvars.copy_context()

    def told(self, report: OutageReport | None) -> OutageReport | None:
        """``report``, run in the waiting trigger's context."""
        if report is None:
            return None
        context = self.context
        return lambda seconds, error: context.run(report, seconds, error)


class PollScheduler:
    """Polls every watched prediction of one connection on one event loop.

    :param client: returns the client to poll with (asked before every poll: a rotated key counts;
        its ``settings.max_polls_in_flight`` bounds the window).
    :param window: how many polls may be in flight (adaptive; see :mod:`airflow_vibedream.waiting.window`).
    :param on_idle: called when nothing is left to watch (the registry forgets the scheduler).
    """

    def __init__(
        self,
        client: Callable[[], Awaitable[AsyncVibeDreamClient]],
        *,
        window: PollWindow | None = None,
        on_idle: Callable[[PollScheduler], None] | None = None,
    ) -> None:
        self._client = client
        self.window = window or PollWindow()
        self._on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._live = 0  # watches whose future is pending
        self._dead = 0  # heap entries whose watch is done (cancelled): dropped lazily
        self._ready: asyncio.Queue[Watch | None] = asyncio.Queue()
        self._idle_workers = 0
        self._in_flight = 0
        self._generation = 0  # bumped when stopped: a cancelled worker's last count is not this one's
        self._wakeup: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._pool: list[asyncio.Task[None]] = []
        #: Counters, for tests and benchmarks.
        self.polls = 0

    def __len__(self) -> int:
        """Predictions being watched."""
        return self._live

    # -- the triggers' side ------------------------------------------------------------------------

    async def wait(
        self,
        wait: PredictionWait,
        *,
        observe: Callable[[Prediction], Any] | None = None,
        on_unavailable: OutageReport | None = None,
        reread: Callable[[], Awaitable[bool]] | None = None,
    ) -> Prediction:
        """The prediction's terminal answer. Raises what ended the wait: the deadline
        (:class:`VibeDreamTimeoutError`), or an error that waiting cannot fix (a refused key, 404).

        :param wait: the prediction's wait: when to poll, and what every answer or error means.
        :param observe: called with every answer (status-change logging).
        :param on_unavailable: told of an outage while polling (see :func:`.gate.poll_client_async`).
        :param reread: after a refused key, reads the connection again: True if it changed (the next
            poll uses the new key). Without it a refusal ends the wait.
        """
        future: asyncio.Future[Prediction] = self._loop.create_future()
        watch = Watch(wait, future, observe, on_unavailable, reread)
        self._live += 1
        self._push(self._loop.time() + wait.first(time.time()).seconds, watch)
        try:
            return await future
        finally:
            if not future.done():  # cancelled while waiting: drop the entry, maybe the scheduler
                future.cancel()
            self._forget(watch)

    # -- scheduling --------------------------------------------------------------------------------

    def _push(self, due: float, watch: Watch) -> None:
        # The wait's delays never pass its deadline: it wakes then, to stop with the timeout.
        heapq.heappush(self._heap, (due, next(self._order), watch))
        if self._dispatcher is None:
            self._start()
        elif self._heap[0][2] is watch:
            self._wake()  # earlier than what the dispatcher sleeps for

    def _forget(self, watch: Watch) -> None:
        self._live -= 1
        self._dead += 1  # its heap entry, if any, is now dead
        if self._live == 0:
            self._stop()
        elif self._dead > len(self._heap) // 2:
            self._heap = [entry for entry in self._heap if not entry[2].future.done()]
            heapq.heapify(self._heap)
            self._dead = 0

    def _task(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task of the scheduler's own, in an empty context (no trigger's log routing)."""
        return contextvars.Context().run(self._loop.create_task, coroutine, name=name)

    def _start(self) -> None:
        self._dispatcher = self._task(self._dispatch(), "vibedream-poll-scheduler")
        self._pool, self._idle_workers, self._in_flight = [], 0, 0

    def _stop(self) -> None:
        for task in (self._dispatcher, *self._pool):
            if task is not None:
                task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self._dispatcher, self._pool, self._timer, self._wakeup = None, [], None, None
        self._generation += 1
        self._heap.clear()
        self._dead = 0
        self._ready = asyncio.Queue()
        if self._on_idle is not None:
            self._on_idle(self)

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _sleep(self, until: float | None) -> None:
        """Until ``until`` (loop time; None: no timer), or until woken."""
        self._wakeup = self._loop.create_future()
        self._timer = self._loop.call_at(until, self._wake) if until is not None else None
        try:
            await self._wakeup
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    async def _dispatch(self) -> None:
        heap = self._heap
        while True:
            heap = self._heap  # replaced when compacted
            if not heap:
                await self._sleep(None)
                continue
            due, _, watch = heap[0]
            if watch.future.done():
                heapq.heappop(heap)
                self._dead = max(0, self._dead - 1)
                continue
            now = self._loop.time()
            if due > now:
                await self._sleep(due)
                continue
            expired = watch.wait.expired(time.time())
            if expired is not None:
                heapq.heappop(heap)
                watch.future.set_exception(expired.error)
                continue
            if self._in_flight >= self.window.size:
                await self._sleep(None)  # a poll that comes back wakes us
                continue
            heapq.heappop(heap)
            if self._idle_workers == 0:  # the pool grows with the window (idle workers cost ~1 KiB)
                self._pool.append(self._task(self._work(), "vibedream-poller"))
                self._idle_workers += 1
            self._idle_workers -= 1
            self._in_flight += 1
            self._ready.put_nowait(watch)

    def _backlogged(self) -> bool:
        """Polls are due and wait for a slot."""
        heap = self._heap
        return bool(heap) and heap[0][0] <= self._loop.time()

    async def _work(self) -> None:
        generation = self._generation
        while True:
            watch = await self._ready.get()
            if watch is None:
                return
            try:
                await self._poll(watch)
            finally:
                if generation == self._generation:
                    self._idle_workers += 1
                    self._in_flight -= 1
                    self._wake()

    async def _poll(self, watch: Watch) -> None:
        if watch.future.done():
            return
        try:
            await self._poll_once(watch)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the wait ends with what ended it; the trigger decides
            if not watch.future.done():
                watch.future.set_exception(exc)

    async def _poll_once(self, watch: Watch) -> None:
        sent = self._loop.time()
        wait = watch.wait
        client = await self._client()
        self.window.ceiling = client.settings.max_polls_in_flight
        self.polls += 1
        try:
            prediction = await poll_client_async(
                client, wait, on_unavailable=watch.told(watch.on_unavailable), on_transient=self._congested
            )
        except VibeDreamError as exc:
            await self._failed(watch, exc, client.settings.retry)
            return
        now = self._loop.time()
        self.window.answered(now - sent, now, saturated=self._backlogged())
        if watch.future.done():  # cancelled while the poll was out
            return
        decision = wait.answered(prediction, time.time())
        if watch.observe is not None and not isinstance(decision, Retry):
            watch.context.run(watch.observe, prediction)  # only an answer the wait accepted is reported
        self._then(watch, decision)

    async def _failed(self, watch: Watch, exc: VibeDreamError, policy: RetryPolicy) -> None:
        """A poll ended with an error the patient poll did not ride out: the wait decides."""
        wait = watch.wait
        failed = wait.failed(exc, time.time(), policy)
        if isinstance(failed, RereadKey):
            # Read (and logged) in the waiting trigger's context, as its own lines are.
            changed = watch.reread is not None and await self._in_context(watch, watch.reread)
            self._then(watch, wait.key_reread(changed, failed.refusal, time.time()))
        else:
            self._then(watch, failed)

    def _then(self, watch: Watch, decision: Next) -> None:
        if watch.future.done():  # cancelled meanwhile
            return
        if isinstance(decision, Finished):
            watch.future.set_result(decision.prediction)
        elif isinstance(decision, Stop):
            watch.future.set_exception(decision.error)
        else:
            self._push(self._loop.time() + decision.seconds, watch)

    @staticmethod
    def _in_context(watch: Watch, reread: Callable[[], Awaitable[bool]]) -> asyncio.Future[bool]:
        async def run() -> bool:
            return await reread()

        return watch.context.run(asyncio.ensure_future, run())

    def _congested(self, exc: BaseException) -> None:
        """A poll met a 429, a 5xx or a network failure (and is retried): fewer polls in flight."""
        self.window.failed(now=self._loop.time())


def loop_scheduler(
    key: str, client: Callable[[], Awaitable[AsyncVibeDreamClient]], **options: Any
) -> PollScheduler:
    """The running loop's scheduler for ``key`` (a connection id), made on first use and kept by the
    loop's :class:`~airflow_vibedream.waiting.loop_local.LoopLocal` while it has waits to watch."""
    schedulers: dict[str, PollScheduler] = loop_local().schedulers
    scheduler = schedulers.get(key)
    if scheduler is None:

        def forget(done: PollScheduler) -> None:
            if schedulers.get(key) is done:
                del schedulers[key]

        scheduler = schedulers[key] = PollScheduler(client, on_idle=forget, **options)
    return scheduler
