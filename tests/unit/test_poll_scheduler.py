"""The per-loop poll scheduler and the learned schedule, with a fake client (no I/O): fairness,
cancellation, deadlines, learning, and the fallback when nothing has been learned yet."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.settings import RetryPolicy
from airflow_vibedream.errors import VibeDreamAuthError, VibeDreamTimeoutError
from airflow_vibedream.waiting.decisions import PredictionWait
from airflow_vibedream.waiting.durations import DurationModel, LearnedSchedule
from airflow_vibedream.waiting.loop_local import loop_local
from airflow_vibedream.waiting.scheduler import PollScheduler, loop_scheduler
from tests.helpers import async_until


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


class FakeJobs:
    """Jobs finishing at given wall-clock times; polls answered at once, each one counted."""

    def __init__(self, finish_at: dict[str, float], created: float) -> None:
        self.finish_at = finish_at
        self.created = created
        self.polls: dict[str, int] = dict.fromkeys(finish_at, 0)
        self.seen_done_at: dict[str, float] = {}
        self.refuse: set[str] = set()
        self.settings = SimpleNamespace(max_polls_in_flight=512, base_url="http://fake", retry=RetryPolicy())

    async def client(self) -> FakeJobs:
        return self

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass

    async def get_prediction(self, prediction_id: str, **_: Any) -> Prediction:
        await asyncio.sleep(0)  # an answer takes a loop turn, as a real one does
        self.polls[prediction_id] += 1
        if prediction_id in self.refuse:
            raise VibeDreamAuthError("HTTP 401", status_code=401)
        now = time.time()
        done = now >= self.finish_at[prediction_id]
        if done:
            self.seen_done_at.setdefault(prediction_id, now)
        return Prediction(
            id=prediction_id,
            status="completed" if done else "processing",
            created_at=iso(self.created),
            completed_at=iso(self.finish_at[prediction_id]) if done else None,
        )


def scheduler_for(jobs: FakeJobs, **options: Any) -> PollScheduler:
    return PollScheduler(jobs.client, **options)  # type: ignore[arg-type]


def waiting(prediction_id: str, *, durations: DurationModel | None = None, **options: Any) -> PredictionWait:
    """A wait that learns into its own model (none learned yet) unless given one."""
    return PredictionWait(prediction_id, durations=durations or DurationModel(), **options)


async def test_a_finishing_job_is_seen_within_its_interval_however_many_others_wait() -> None:
    now = time.time()
    finish = {f"busy-{n}": now + 3600 for n in range(2000)} | {"quick": now + 0.3}
    jobs = FakeJobs(finish, created=now)
    jobs.settings.max_polls_in_flight = 8
    scheduler = scheduler_for(jobs)
    interval = 0.1
    waits = {
        pid: asyncio.ensure_future(scheduler.wait(waiting(pid, interval=interval, deadline=None, kind="k")))
        for pid in finish
    }
    answer = await asyncio.wait_for(waits["quick"], timeout=30)
    assert answer.status == "completed"
    # Seen within one interval (plus the loop's own latency) of finishing, though 2000 others are
    # polled every interval with at most 8 polls in flight.
    assert jobs.seen_done_at["quick"] - finish["quick"] < interval + 0.5
    for task in waits.values():
        task.cancel()
    await asyncio.gather(*waits.values(), return_exceptions=True)
    assert len(scheduler) == 0


async def test_cancelled_waits_leave_nothing_behind() -> None:
    now = time.time()
    jobs = FakeJobs({f"p{n}": now + 3600 for n in range(500)}, created=now)
    scheduler = loop_scheduler("cancel-test", jobs.client)  # type: ignore[arg-type]
    tasks = [
        asyncio.ensure_future(scheduler.wait(waiting(pid, interval=0.05, deadline=None, kind="k")))
        for pid in jobs.finish_at
    ]
    await async_until(lambda: sum(jobs.polls.values()) >= 500, what="every wait to be polled")
    assert len(scheduler) == 500
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0)  # the workers' cancellations run
    assert len(scheduler) == 0 and scheduler._heap == []
    assert "cancel-test" not in loop_local().schedulers
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current and not t.done()] == []
    polls = sum(jobs.polls.values())
    await asyncio.sleep(0.2)  # an observation window (4 poll intervals), not a synchronisation
    assert sum(jobs.polls.values()) == polls  # nobody polls for a cancelled wait


async def test_the_deadline_ends_the_wait_even_between_sparse_polls() -> None:
    now = time.time()
    jobs = FakeJobs({"slow": now + 3600}, created=now)
    scheduler = scheduler_for(jobs)
    with pytest.raises(VibeDreamTimeoutError, match="did not finish before the deadline"):
        await asyncio.wait_for(
            scheduler.wait(waiting("slow", interval=600, deadline=time.time() + 0.3, kind="k")), timeout=10
        )


async def test_an_error_waiting_cannot_fix_ends_only_that_wait() -> None:
    now = time.time()
    jobs = FakeJobs({"refused": now + 3600, "fine": now + 0.2}, created=now)
    jobs.refuse.add("refused")
    scheduler = scheduler_for(jobs)
    refused = asyncio.ensure_future(
        scheduler.wait(waiting("refused", interval=0.05, deadline=None, kind="k"))
    )
    fine = asyncio.ensure_future(scheduler.wait(waiting("fine", interval=0.05, deadline=None, kind="k")))
    with pytest.raises(VibeDreamAuthError):
        await refused
    assert (await asyncio.wait_for(fine, timeout=10)).status == "completed"


async def test_durations_are_learned_per_kind_from_the_answers() -> None:
    now = time.time()
    durations = DurationModel()
    jobs = FakeJobs({f"p{n}": now + 0.05 * n for n in range(1, 21)}, created=now)
    scheduler = scheduler_for(jobs)
    await asyncio.gather(
        *(
            scheduler.wait(
                waiting(pid, interval=0.02, deadline=None, kind="upscaler:2k", durations=durations)
            )
            for pid in jobs.finish_at
        )
    )
    learned = durations.samples("upscaler:2k")
    assert len(learned) == 20 and learned == sorted(learned)
    assert learned[0] == pytest.approx(0.05, abs=0.01) and learned[-1] == pytest.approx(1.0, abs=0.01)
    assert durations.samples("upscaler:4k") == []


def test_with_nothing_learned_the_schedule_falls_back_to_dense_then_by_age() -> None:
    schedule = LearnedSchedule()
    for samples in ([], [10.0] * (schedule.min_samples - 1)):
        assert schedule.next_delay(samples, 2.0, 0.0) == 2.0  # the API's 1-2 s while young
        assert schedule.next_delay(samples, 2.0, 100.0) == 3.0  # 3% of the age past a minute
        assert schedule.next_delay(samples, 2.0, 10_000.0) == 10.0  # capped


def test_learned_schedule_is_sparse_before_jobs_finish_dense_where_they_do_and_by_age_after() -> None:
    schedule = LearnedSchedule()
    samples = sorted(5.0 + 25.0 * n / 999 for n in range(1000))  # jobs of 5-30 s, evenly
    young = schedule.next_delay(samples, 2.0, 1.0)
    assert 4.0 <= young <= 4.2  # nothing finishes before ~5 s: the next poll is then
    assert schedule.next_delay(samples, 2.0, 12.0) == 2.0  # where they finish: dense
    assert schedule.next_delay(samples, 2.0, 45.0) == schedule.fallback(2.0, 45.0)  # older than all
    tail = sorted([*samples[:980], *(300.0 + 15.0 * n for n in range(20))])  # a 2% tail at 5-10 min
    assert schedule.next_delay(tail, 2.0, 40.0) == schedule.max_sparse  # no job ends in 30 s-5 min
    assert schedule.max_sparse >= schedule.next_delay(tail, 2.0, 310.0) > 2.0  # sparse in the tail


async def test_a_key_reread_that_fails_ends_that_wait_with_its_error_not_a_hang() -> None:
    now = time.time()
    jobs = FakeJobs({"refused": now + 3600}, created=now)
    jobs.refuse.add("refused")
    scheduler = scheduler_for(jobs)

    async def unreadable_connection() -> bool:
        raise RuntimeError("the connection cannot be read")

    wait = scheduler.wait(waiting("refused", interval=0.05, kind="k"), reread=unreadable_connection)
    with pytest.raises(RuntimeError, match="cannot be read"):
        await asyncio.wait_for(wait, timeout=10)
    assert len(scheduler) == 0


async def test_a_rotated_key_is_polled_again_at_once_and_a_second_refusal_stands() -> None:
    now = time.time()
    jobs = FakeJobs({"refused": now + 3600}, created=now)
    jobs.refuse.add("refused")
    scheduler = scheduler_for(jobs)
    rereads = 0

    async def rotated() -> bool:
        nonlocal rereads
        rereads += 1
        return True

    wait = scheduler.wait(waiting("refused", interval=5.0, kind="k"), reread=rotated)
    with pytest.raises(VibeDreamAuthError):
        await asyncio.wait_for(wait, timeout=10)  # the second poll is at once, not 5 s later
    assert rereads == 1 and jobs.polls["refused"] == 2
