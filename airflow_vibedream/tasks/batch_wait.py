"""A batch waiting in its worker (not deferred): per image, with the batch trigger's decisions.

Every image is one :class:`~airflow_vibedream.waiting.decisions.PredictionWait` in the worker's
wait (:func:`airflow_vibedream.waiting.blocking.wait_in_worker`): polled on its own learned
schedule, at most ``concurrency`` polls at once, not in rounds. Each outcome is read as the batch
trigger reads it (:func:`~airflow_vibedream.waiting.decisions.poll_outcome`: a 404 fails that image
only, any other error is the whole batch's); the progress record and log line stay current.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.errors import VibeDreamError, VibeDreamTimeoutError
from airflow_vibedream.tasks.events import Throttled, log_unavailable
from airflow_vibedream.tasks.progress import PUBLISH_EVERY
from airflow_vibedream.waiting.blocking import WorkerHooks, wait_in_worker
from airflow_vibedream.waiting.decisions import FAILED, PENDING, PredictionWait, poll_outcome

if TYPE_CHECKING:
    from airflow_vibedream.client.sync import VibeDreamClient


@dataclass(frozen=True)
class WorkerWait:
    """How a batch waits in its worker.

    :param deadline: epoch seconds; images still processing then stay pending.
    :param interval: seconds between polls of an image where jobs of its kind finish.
    :param kind: what kind of jobs (model and resolution), for the learned schedule.
    :param concurrency: polls in flight at most.
    :param progress_interval: seconds between progress lines.
    :param model_id: the model the jobs were asked of: an answer naming another is not theirs.
    """

    deadline: float
    interval: float
    kind: str
    concurrency: int
    progress_interval: float
    model_id: str | None = None


class _Progress:
    """The gallery's progress record every few seconds (and at the end), the log line every
    ``progress_interval``."""

    def __init__(self, total: int, every: float, log: Any, publish: Callable[[int, int], Any] | None) -> None:
        self.total, self.every, self.log, self.publish = total, every, log, publish
        self.done = self.failed = 0
        self.started = self.last_line = self.last_publish = time.monotonic()

    def over(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed

    def tick(self, final: bool = False) -> None:
        now = time.monotonic()
        if self.publish is not None and (final or now - self.last_publish >= PUBLISH_EVERY):
            self.last_publish = now
            self.publish(self.done, self.failed)
        if final or now - self.last_line >= self.every:
            self.last_line = now
            self.log.info(
                "VibeDream batch: %d/%d done, %d failed, %.0fs elapsed",
                self.done,
                self.total,
                self.failed,
                now - self.started,
            )


def wait_for_batch_in_worker(
    client: VibeDreamClient,
    ids: list[str],
    how: WorkerWait,
    *,
    log: Any,
    publish: Callable[[int, int], Any] | None = None,
    reread: Callable[[], VibeDreamClient | None] | None = None,
) -> dict[str, tuple[str, str | None]]:
    """``(pending|done|failed, error)`` of every prediction, waited for until none is pending or
    the deadline passes. Raises the first error that is the whole batch's (a refused key).

    :param publish: keeps the batch's progress record current: called with (done, failed).
    :param reread: after a refused key, a client of the re-read connection if it changed, else None.
    """
    outcome: dict[str, tuple[str, str | None]] = dict.fromkeys(ids, (PENDING, None))
    progress = _Progress(len(ids), how.progress_interval, log, publish)

    def over(wait: PredictionWait, answer: Prediction | VibeDreamError) -> None:
        if isinstance(answer, VibeDreamTimeoutError):  # the deadline: this image stays pending
            return
        outcome[wait.prediction_id] = state = poll_outcome(answer)  # raises what is the whole batch's
        progress.over(state[0] == FAILED)

    wait_in_worker(
        client,
        [
            PredictionWait(
                pid,
                interval=how.interval,
                deadline=how.deadline,
                kind=how.kind,
                model_id=how.model_id,
                large_answers=False,  # a batch asks no base64 outputs: status answers only
            )
            for pid in ids
        ],
        concurrency=how.concurrency,
        hooks=WorkerHooks(
            on_over=over,
            on_tick=progress.tick,
            on_unavailable=Throttled(lambda seconds, error: log_unavailable(log, seconds, error)),
            reread=reread,
        ),
    )
    progress.tick(final=True)
    return outcome
