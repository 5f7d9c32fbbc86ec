"""What happens next in one prediction's wait: one decision object for every loop that waits.

The prediction trigger, the batch trigger (both through :mod:`.scheduler`), the operator waiting in
its worker and the batch waiting in its worker (both through :mod:`.blocking`) feed a
:class:`PredictionWait` every answer and every error, with the time, and do what it says:

- :class:`Finished`: the prediction is over (completed or failed): hand it back;
- :class:`PollAfter`: poll again after so many seconds (the learned schedule, never past the
  deadline);
- :class:`Retry`: a transient failure (429, 5xx, network, an unreadable answer): try again after a
  back-off, through the outage gate;
- :class:`RereadKey`: the API refused the key: read the connection once more, then tell the wait
  whether it changed (:meth:`PredictionWait.key_reread`);
- :class:`Stop`: waiting cannot help (the deadline, a 404, a key refused twice): end with the error.

An answer counts only for what was asked: an answer whose id is not the polled prediction's (or
whose ``modelId`` is not the model asked) is a transient protocol error, retried like an unreadable
answer until the deadline, whose timeout then says so; never a :class:`Finished`.

It does no I/O and reads no clock: every decision takes ``now`` (epoch seconds), so its cases are a
table on a fake clock (``tests/unit/test_wait_decisions.py``), and the four loops cannot drift.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from airflow_vibedream.client.calls import deadline_reached
from airflow_vibedream.client.models import Prediction, check_answer_is_for, iso_seconds
from airflow_vibedream.client.settings import RetryPolicy
from airflow_vibedream.errors import (
    VibeDreamAnswerMismatchError,
    VibeDreamAuthError,
    VibeDreamError,
    VibeDreamNotFoundError,
    VibeDreamProtocolError,
    VibeDreamTimeoutError,
)
from airflow_vibedream.waiting.durations import DURATIONS, DurationModel, LearnedSchedule

#: The schedule of every wait that is not given one.
DEFAULT_SCHEDULE = LearnedSchedule()


@dataclass(frozen=True, slots=True)
class Finished:
    """The prediction is over (completed or failed)."""

    prediction: Prediction


@dataclass(frozen=True, slots=True)
class PollAfter:
    """Poll again after ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Retry:
    """A transient failure: try again after ``seconds`` (the gate counts the failure)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class RereadKey:
    """The key was refused: read the connection again, then call :meth:`PredictionWait.key_reread`."""

    refusal: VibeDreamAuthError


@dataclass(frozen=True, slots=True)
class Stop:
    """Waiting cannot help: end the wait with ``error``."""

    error: VibeDreamError


AfterAnswer = Finished | PollAfter | Retry | Stop
AfterError = Retry | RereadKey | Stop
#: What a loop acts on: every decision but :class:`RereadKey`, which it turns into one of these.
Next = Finished | PollAfter | Retry | Stop


def worth_waiting_for(policy: RetryPolicy, exc: VibeDreamError) -> bool:
    """Transient for a poll: what the policy retries, and an unreadable answer (a proxy's error page
    now is no reason to give up on a job that is running and billed)."""
    return policy.is_retryable(exc) or isinstance(exc, VibeDreamProtocolError)


class PredictionWait:
    """One prediction's wait: its schedule, its deadline, its retries and its one key re-read.

    :param prediction_id: the prediction waited for.
    :param interval: seconds between polls where jobs of its kind finish (the API's 1-2 s).
    :param deadline: epoch seconds after which the wait stops with a timeout; None: never.
    :param kind: what kind of job (model and resolution): durations are learned per kind.
    :param created_at: the job's creation, epoch seconds, if known (else its first answer says).
    :param schedule: when to poll, from the durations.
    :param durations: where durations are learned and read (None: the process's model).
    :param rng: jitter of the first poll of a job of unknown age (tests pass a seeded one).
    :param model_id: the model the prediction was asked of, if known: an answer naming another
        model is not this prediction's.
    :param large_answers: the answer may carry base64 outputs, or nobody knows (read up to
        ``max_response_bytes``); False, when the waiter knows no base64 was asked: a poll then reads
        a status answer's size at most (see ``client.calls.STATUS_ANSWER_BYTES``).
    """

    __slots__ = (
        "attempts",
        "created",
        "deadline",
        "durations",
        "interval",
        "kind",
        "large_answers",
        "mismatch",
        "model_id",
        "prediction_id",
        "reread",
        "rng",
        "schedule",
    )

    def __init__(
        self,
        prediction_id: str,
        *,
        interval: float,
        deadline: float | None = None,
        kind: str = "default",
        created_at: float | None = None,
        schedule: LearnedSchedule = DEFAULT_SCHEDULE,
        durations: DurationModel | None = None,
        rng: random.Random | None = None,
        model_id: str | None = None,
        large_answers: bool = True,
    ) -> None:
        self.prediction_id = prediction_id
        self.model_id = model_id
        self.large_answers = large_answers
        #: The last answer that was for another prediction or model, if any (the timeout says it).
        self.mismatch: VibeDreamAnswerMismatchError | None = None
        self.interval = interval
        self.deadline = deadline
        self.kind = kind
        self.created = created_at
        self.schedule = schedule
        self.durations = durations if durations is not None else DURATIONS
        self.rng = rng
        self.attempts = 0  # transient failures in a row
        self.reread = False  # the connection was read again after a refusal

    # -- before a poll -----------------------------------------------------------------------------

    def first(self, now: float) -> PollAfter:
        """The delay before the first poll. A job of unknown age is first polled at a random point of
        one interval: a thousand tasks deferring together would otherwise poll in one burst, and keep
        polling in lockstep."""
        if self.created is None:
            jitter = (self.rng or random).uniform(0, self.interval)
            return PollAfter(self._capped(jitter, now))
        return PollAfter(self._capped(self._scheduled(now), now))

    def expired(self, now: float) -> Stop | None:
        """A :class:`Stop` with the timeout once the deadline has passed (checked before each poll)."""
        if self.deadline is not None and now >= self.deadline:
            return Stop(self._timeout(self.deadline))
        return None

    def _timeout(self, deadline: float) -> VibeDreamTimeoutError:
        timeout = deadline_reached(self.prediction_id, deadline)
        if self.mismatch is None:
            return timeout
        return VibeDreamTimeoutError(
            f"{timeout.message}. No answer for it was accepted: {self.mismatch.message}",
            prediction_id=self.prediction_id,
        )

    # -- after a poll ------------------------------------------------------------------------------

    def answered(self, prediction: Prediction, now: float) -> AfterAnswer:
        """The API answered: over, or when to poll next (or the deadline, if it has passed). An
        answer for another prediction or model is retried like an unreadable one (the clients refuse
        it before this; checked here again so that no loop can adopt one)."""
        try:
            check_answer_is_for(prediction, self.prediction_id, self.model_id)
        except VibeDreamAnswerMismatchError as exc:
            self.mismatch = exc
            self.attempts += 1
            return self.expired(now) or Retry(self._capped(self.interval, now))
        self.attempts = 0
        if prediction.is_terminal:
            self._learn(prediction)
            return Finished(prediction)
        if self.created is None:  # the API's clock, so a restarted wait still knows the job's age
            created = iso_seconds(prediction.created_at)
            self.created = min(created, now) if created is not None else now
        return self.expired(now) or PollAfter(self._capped(self._scheduled(now), now))

    def failed(self, exc: VibeDreamError, now: float, policy: RetryPolicy) -> AfterError:
        """A poll failed: retry after a back-off (transient), re-read the key (the first refusal),
        or stop (the deadline, or an error that waiting cannot fix)."""
        if isinstance(exc, VibeDreamAnswerMismatchError):
            self.mismatch = exc
        if worth_waiting_for(policy, exc):
            expired = self.expired(now)
            if expired is not None:
                return expired
            self.attempts += 1
            return Retry(self._capped(policy.backoff(self.attempts, exc), now))
        if isinstance(exc, VibeDreamAuthError) and not self.reread:
            self.reread = True
            return RereadKey(exc)
        return Stop(exc)

    def key_reread(self, changed: bool, refusal: VibeDreamAuthError, now: float) -> PollAfter | Stop:
        """After :class:`RereadKey`: poll again at once with the new key, or stop with the refusal."""
        if not changed:
            return Stop(refusal)
        return self.expired(now) or PollAfter(0.0)

    # -- the schedule ------------------------------------------------------------------------------

    def _scheduled(self, now: float) -> float:
        age = max(0.0, now - self.created) if self.created is not None else 0.0
        return self.schedule.next_delay(self.durations.samples(self.kind), self.interval, age)

    def _capped(self, seconds: float, now: float) -> float:
        """Never past the deadline: the wait wakes then to stop with the timeout."""
        if self.deadline is None:
            return seconds
        return max(0.0, min(seconds, self.deadline - now))

    def _learn(self, prediction: Prediction) -> None:
        created, completed = iso_seconds(prediction.created_at), iso_seconds(prediction.completed_at)
        if created is not None and completed is not None:
            self.durations.observe(self.kind, completed - created)


# -- reading poll answers: the same for the trigger and the worker loop ---------------------------------

PENDING = "pending"
DONE = "done"
FAILED = "failed"


def poll_outcome(answer: Prediction | VibeDreamError) -> tuple[str, str | None]:
    """``(pending|done|failed, error)`` of one poll of one image. A prediction that is gone (404)
    failed, for this image only; any other error is the whole batch's and is raised by the caller."""
    if isinstance(answer, VibeDreamNotFoundError):
        return FAILED, str(answer)
    if isinstance(answer, VibeDreamError):
        raise answer
    if answer.failed:
        return FAILED, answer.error or "failed (no reason given)"
    if answer.succeeded:
        return DONE, None
    return PENDING, None
