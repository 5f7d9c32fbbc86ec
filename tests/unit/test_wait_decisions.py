"""The decision object of every wait, on a fake clock: a table of (situation, what happens next)."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.settings import RetryPolicy
from airflow_vibedream.errors import (
    VibeDreamAuthError,
    VibeDreamError,
    VibeDreamNotFoundError,
    VibeDreamProtocolError,
    VibeDreamRateLimitedError,
    VibeDreamServerError,
    VibeDreamTimeoutError,
    VibeDreamTransportError,
    VibeDreamValidationError,
)
from airflow_vibedream.waiting.decisions import (
    Finished,
    PollAfter,
    PredictionWait,
    RereadKey,
    Retry,
    Stop,
)
from airflow_vibedream.waiting.durations import DurationModel

T0 = 1_800_000_000.0  # the fake clock's start, epoch seconds
POLICY = RetryPolicy(initial_backoff=1.0, max_backoff=8.0)
EVENLY_5_TO_30 = [5.0 + 25.0 * n / 999 for n in range(1000)]


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def answer(status: str = "processing", created: float = T0, completed: float | None = None) -> Prediction:
    return Prediction(
        id="p1",
        status=status,
        created_at=iso(created),
        completed_at=iso(completed) if completed is not None else None,
        error="flagged" if status == "failed" else None,
    )


def wait_for(
    *, deadline: float | None = None, created_at: float | None = T0, learned: list[float] | None = None
) -> PredictionWait:
    durations = DurationModel()
    for seconds in learned or []:
        durations.observe("k", seconds)
    return PredictionWait(
        "p1",
        interval=1.0,
        deadline=deadline,
        kind="k",
        created_at=created_at,
        durations=durations,
        rng=random.Random(7),
    )


# -- before the first poll -------------------------------------------------------------------------


def test_a_job_of_unknown_age_is_first_polled_within_one_interval_at_random() -> None:
    delays = {wait_for(created_at=None).first(T0).seconds for _ in range(3)}
    assert all(0.0 <= d <= 1.0 for d in delays)


@pytest.mark.parametrize(
    ("learned", "age", "expected"),
    [
        ([], 0.0, 1.0),  # nothing learned: the interval
        (EVENLY_5_TO_30, 0.0, pytest.approx(5.1, abs=0.05)),  # learned: when jobs start to finish
        (EVENLY_5_TO_30, 12.0, 1.0),  # where they finish: the interval
    ],
)
def test_the_first_poll_of_a_job_of_known_age_follows_the_schedule(
    learned: list[float], age: float, expected: object
) -> None:
    assert wait_for(learned=learned).first(T0 + age) == PollAfter(expected)  # type: ignore[arg-type]


def test_no_delay_passes_the_deadline_and_a_passed_deadline_stops() -> None:
    wait = wait_for(deadline=T0 + 2.0, learned=EVENLY_5_TO_30)
    assert wait.first(T0) == PollAfter(2.0)  # the schedule says 5.1 s; the deadline is sooner
    assert wait.expired(T0 + 1.9) is None
    stop = wait.expired(T0 + 2.0)
    assert isinstance(stop, Stop) and isinstance(stop.error, VibeDreamTimeoutError)
    assert stop.error.prediction_id == "p1"


# -- after an answer -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_a_terminal_answer_finishes_the_wait_and_teaches_its_duration(status: str) -> None:
    wait = wait_for()
    done = answer(status, completed=T0 + 12.5)
    assert wait.answered(done, T0 + 13) == Finished(done)
    assert wait.durations.samples("k") == [12.5]


def test_a_running_job_is_polled_again_by_the_schedule_and_never_past_the_deadline() -> None:
    assert wait_for().answered(answer(), T0 + 3) == PollAfter(1.0)
    assert wait_for(learned=EVENLY_5_TO_30).answered(answer(), T0 + 1) == PollAfter(
        pytest.approx(4.1, abs=0.05)  # type: ignore[arg-type]
    )
    assert wait_for(deadline=T0 + 3.5).answered(answer(), T0 + 3) == PollAfter(0.5)
    late = wait_for(deadline=T0 + 3).answered(answer(), T0 + 3)
    assert isinstance(late, Stop) and isinstance(late.error, VibeDreamTimeoutError)


def test_the_age_of_a_job_of_unknown_age_comes_from_its_first_answer() -> None:
    wait = wait_for(created_at=None, learned=EVENLY_5_TO_30)
    assert wait.answered(answer(created=T0 - 12), T0) == PollAfter(1.0)  # 12 s old: where jobs finish
    assert wait.created == T0 - 12


# -- after an error --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        VibeDreamServerError("HTTP 503", status_code=503),
        VibeDreamRateLimitedError("HTTP 429", status_code=429),
        VibeDreamTransportError("no answer", request_sent=True),
        VibeDreamProtocolError("not JSON"),
    ],
    ids=["5xx", "429", "network", "unreadable answer"],
)
def test_a_transient_failure_is_retried_after_a_growing_back_off(error: VibeDreamError) -> None:
    wait = wait_for()
    ceilings = []
    for _ in range(5):
        decision = wait.failed(error, T0, POLICY)
        assert isinstance(decision, Retry)
        ceilings.append(min(8.0, 2 ** (wait.attempts - 1)))
        assert 0.0 <= decision.seconds <= ceilings[-1]
    assert ceilings == [1, 2, 4, 8, 8]
    wait.answered(answer(), T0)  # an answer ends the run of failures
    assert wait.attempts == 0


def test_a_retry_after_is_honoured_but_not_past_the_deadline() -> None:
    asked = VibeDreamRateLimitedError("HTTP 429", status_code=429, retry_after=7.0)
    assert wait_for().failed(asked, T0, POLICY) == Retry(7.0)
    assert wait_for(deadline=T0 + 3).failed(asked, T0, POLICY) == Retry(3.0)
    late = wait_for(deadline=T0 + 3).failed(asked, T0 + 3, POLICY)
    assert isinstance(late, Stop) and isinstance(late.error, VibeDreamTimeoutError)


def test_a_refused_key_is_reread_once_then_the_refusal_stands() -> None:
    refusal = VibeDreamAuthError("HTTP 401", status_code=401)
    wait = wait_for()
    assert wait.failed(refusal, T0, POLICY) == RereadKey(refusal)
    assert wait.key_reread(True, refusal, T0) == PollAfter(0.0)  # the key changed: poll now
    assert wait.failed(refusal, T0 + 1, POLICY) == Stop(refusal)  # refused again: final
    unchanged = wait_for()
    assert unchanged.failed(refusal, T0, POLICY) == RereadKey(refusal)
    assert unchanged.key_reread(False, refusal, T0) == Stop(refusal)


@pytest.mark.parametrize(
    "error",
    [
        VibeDreamNotFoundError("HTTP 404", status_code=404),
        VibeDreamValidationError("HTTP 400", status_code=400),
        VibeDreamTimeoutError("deadline", prediction_id="p1"),
    ],
    ids=["404", "400", "deadline"],
)
def test_an_error_waiting_cannot_fix_stops_the_wait(error: VibeDreamError) -> None:
    assert wait_for().failed(error, T0, POLICY) == Stop(error)


# -- an answer counts only for what was asked -----------------------------------------------------------


@pytest.mark.parametrize(
    ("answered_id", "answered_model"),
    [("another-prediction", "image-upscaler"), ("p1", "face-swap")],
    ids=["another prediction", "another model"],
)
def test_an_answer_for_another_prediction_or_model_is_retried_never_finished(
    answered_id: str, answered_model: str
) -> None:
    wait = PredictionWait("p1", interval=1.0, deadline=T0 + 10, model_id="image-upscaler")
    other = Prediction(id=answered_id, status="completed", model_id=answered_model, outputs=["x"])
    decision = wait.answered(other, T0 + 1)
    assert isinstance(decision, Retry)
    assert 0 < decision.seconds <= 1.0
    # At the deadline it stops with a timeout that says which answer was refused, and why.
    stop = wait.answered(other, T0 + 10)
    assert isinstance(stop, Stop) and isinstance(stop.error, VibeDreamTimeoutError)
    assert (answered_model if answered_id == "p1" else answered_id) in str(stop.error)
    assert "not a result" in str(stop.error)


def test_the_answer_for_the_polled_prediction_and_model_is_adopted() -> None:
    wait = PredictionWait("p1", interval=1.0, deadline=T0 + 10, model_id="image-upscaler")
    mine = Prediction(id="p1", status="completed", model_id="image-upscaler", outputs=["x"])
    assert wait.answered(mine, T0 + 1) == Finished(mine)
    # An answer without modelId (the API may leave it out) is judged by its id alone.
    assert isinstance(wait.answered(Prediction(id="p1", status="processing"), T0 + 1), PollAfter)


def test_a_mismatch_the_client_refused_is_transient_and_said_at_the_deadline() -> None:
    from airflow_vibedream.client.models import check_answer_is_for
    from airflow_vibedream.errors import VibeDreamAnswerMismatchError

    wait = PredictionWait("p1", interval=1.0, deadline=T0 + 5)
    with pytest.raises(VibeDreamAnswerMismatchError) as refused:
        check_answer_is_for(Prediction(id="zz", status="completed"), "p1")
    assert isinstance(wait.failed(refused.value, T0 + 1, POLICY), Retry)
    stop = wait.failed(refused.value, T0 + 5, POLICY)
    assert isinstance(stop, Stop) and "zz" in str(stop.error) and "p1" in str(stop.error)
