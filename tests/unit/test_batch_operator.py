"""The batch operator and its submitter with a fake client (no I/O): parse-time validation, records
keyed by fingerprint, every returned id recorded, unknown states recorded and never resent."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest

from airflow_vibedream.client import Prediction
from airflow_vibedream.errors import (
    VibeDreamRateLimitedError,
    VibeDreamSubmissionStateUnknownError,
    VibeDreamValidationError,
)
from airflow_vibedream.jobs.batch import BatchSubmitter, SubmitsStopped, TaskStateGone
from airflow_vibedream.jobs.signing import RecordSigner
from airflow_vibedream.jobs.submissions import UNKNOWN, SubmissionRecord, SubmissionStore
from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from airflow_vibedream.waiting.decisions import DONE, FAILED, PENDING, poll_outcome
from tests.helpers import FakeStateStore, FakeTI

SIGNER = RecordSigner("test-record-secret")

IMAGES = [f"https://example.com/{i}.png" for i in range(6)]


def operator(**kwargs: Any) -> VibeDreamBatchUpscaleOperator:
    values: dict[str, Any] = {
        "task_id": "batch",
        "images": IMAGES,
        "target_resolution": "2k",
        "output_format": "jpeg",
        "output_path": "/tmp/unused",
        **kwargs,
    }
    return VibeDreamBatchUpscaleOperator(**values)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("poll_interval", 0),
        ("poll_interval", -1),
        ("poll_interval", float("nan")),
        ("timeout", float("inf")),
        ("progress_interval", 0),
        ("max_concurrency", 0),
        ("max_concurrency", 1.5),
        ("requests_per_minute", -2),
        ("target_resolution", "3k"),
        ("output_format", "gif"),
        ("max_cost_cents", float("nan")),
    ],
)
def test_bad_parameters_fail_at_parse_time_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(VibeDreamValidationError) as info:
        operator(**{field: value})
    assert info.value.field == field and field in str(info.value)


def test_templated_values_are_checked_after_rendering() -> None:
    task = operator(target_resolution="{{ params.res }}")  # accepted at parse time
    task.target_resolution = "3k"  # what rendering produced
    with pytest.raises(VibeDreamValidationError, match="target_resolution must be one of"):
        task.batch_images()


def test_each_image_is_keyed_by_its_own_request() -> None:
    items = operator().batch_images()
    assert len({item.key for item in items}) == len(IMAGES)
    assert {item.key for item in items}.isdisjoint(
        {i.key for i in operator(target_resolution="4k").batch_images()}
    )
    assert all(item.spec.asked["image"] == image for item, image in zip(items, IMAGES, strict=True))


class FakeClient:
    """Answers submits in order from ``answers`` (a Prediction or an exception each)."""

    def __init__(self, answers: list[Prediction | Exception], gate: threading.Event | None = None) -> None:
        self.answers = iter(answers)
        self.lock = threading.Lock()
        self.sent = 0
        self.gate = gate

    def submit(self, model_id: str, payload: dict[str, Any]) -> Prediction:
        if self.gate is not None:
            self.gate.wait(5)
        with self.lock:
            self.sent += 1
            answer = next(self.answers)
        if isinstance(answer, Exception):
            raise answer
        return answer


def submitter(client: FakeClient, store: FakeStateStore, **kwargs: Any) -> BatchSubmitter:
    values: dict[str, Any] = {
        "client": client,
        "store": SubmissionStore({"ti": FakeTI(), "task_state_store": store}, SIGNER),  # type: ignore[arg-type]
        "log": __import__("logging").getLogger("test"),
        "payload": lambda item: dict(item.spec.asked),
        "max_concurrency": 1,
        "requests_per_minute": None,
        "request_timeout": 1.0,
        **kwargs,
    }
    return BatchSubmitter(**values)


def test_every_outcome_is_recorded_as_it_should_be() -> None:
    items = operator().batch_images()[:4]
    client = FakeClient(
        [
            Prediction(id="p0", status="processing", cost_cents=2),
            VibeDreamSubmissionStateUnknownError("HTTP 502 after sending"),
            VibeDreamRateLimitedError("429", status_code=429),
            Prediction(id="p3", status="processing", cost_cents=2),
        ]
    )
    store = FakeStateStore()
    result = submitter(client, store).submit_all(items)
    recorded = {key: SubmissionRecord.from_json(value) for key, value in store.values.items()}
    assert recorded[items[0].key].prediction_id == "p0"  # type: ignore[union-attr]
    assert recorded[items[1].key].state == UNKNOWN  # type: ignore[union-attr]
    # A 429 surely created no job: not recorded, so a retry may send it.
    assert items[2].key not in recorded and "429" in result.errors[items[2].key]
    assert recorded[items[3].key].prediction_id == "p3"  # type: ignore[union-attr]


def test_stop_sends_nothing_more_and_keeps_what_came_back() -> None:
    items = operator().batch_images()
    gate = threading.Event()
    client = FakeClient([Prediction(id=f"p{i}", status="processing") for i in range(6)], gate=gate)
    store = FakeStateStore()
    runner = submitter(client, store)
    threading.Timer(0.2, lambda: (runner.stop(), gate.set())).start()
    with pytest.raises(SubmitsStopped):
        runner.submit_all(items)
    assert client.sent == 1 and len(store.values) == 1  # the one in flight was recorded; nothing else sent


def test_an_in_flight_submit_that_outlives_the_wind_down_is_recorded_unknown() -> None:
    items = operator().batch_images()[:2]
    never = threading.Event()
    client = FakeClient([Prediction(id="late", status="processing")] * 2, gate=never)
    store = FakeStateStore()
    runner = submitter(client, store, request_timeout=0.2, max_concurrency=2)
    threading.Timer(0.1, runner.stop).start()
    with pytest.raises(SubmitsStopped):
        runner.submit_all(items)
    never.set()
    states = {SubmissionRecord.from_json(v).state for v in store.values.values()}  # type: ignore[union-attr]
    assert states == {UNKNOWN} and len(store.values) == 2  # may exist: never resent automatically


class StateGoneAfter(FakeStateStore):
    """Airflow's state API once the task instance was cleared: every write after the first
    ``writes`` answers 404."""

    def __init__(self, writes: int) -> None:
        super().__init__()
        self.allowed = writes

    def set(self, key: str, value: Any) -> None:
        if len(self.values) >= self.allowed:
            raise RuntimeError("404 Task instance not found")
        super().set(key, value)


class SlowClient(FakeClient):
    """Each submit takes a moment, as a real API's does."""

    def submit(self, model_id: str, payload: dict[str, Any]) -> Prediction:
        time.sleep(0.2)
        return super().submit(model_id, payload)


def test_a_failed_write_of_the_tasks_state_is_never_a_failed_submit() -> None:
    """Cleared while it submits: the id that came back is journalled first, the record of it kept,
    and nothing more is sent; every image is accounted for (recorded, or surely never sent)."""
    items = operator().batch_images()
    answers = [Prediction(id=f"p{i}", status="processing", cost_cents=2) for i in range(len(items))]
    client = SlowClient(answers)
    journal: list[str] = []
    runner = submitter(client, StateGoneAfter(2), on_submitted=lambda item, p: journal.append(p.id))
    with pytest.raises(TaskStateGone, match="cleared, marked or deleted"):
        runner.submit_all(items)
    # Two recorded; the third's write failed while the fourth was in flight: nothing sent after it.
    assert client.sent == 4
    assert journal == ["p0", "p1", "p2", "p3"]  # every id reached the ledger's journal all the same
    assert [r.prediction_id for r in runner.result.records.values()] == journal
    assert runner.result.never_sent == {item.key for item in items[4:]}
    assert runner.result.errors == {}  # nothing read as a refused submit


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Prediction(id="p", status="processing"), (PENDING, None)),
        (Prediction(id="p", status="completed"), (DONE, None)),
        (Prediction(id="p", status="failed", error="flagged"), (FAILED, "flagged")),
    ],
)
def test_poll_outcome(answer: Prediction, expected: tuple[str, str | None]) -> None:
    assert poll_outcome(answer) == expected


def test_poll_outcome_fails_one_image_on_404_and_raises_the_rest() -> None:
    from airflow_vibedream.errors import VibeDreamAuthError, VibeDreamNotFoundError

    assert poll_outcome(VibeDreamNotFoundError("gone", status_code=404))[0] == FAILED
    with pytest.raises(VibeDreamAuthError):
        poll_outcome(VibeDreamAuthError("401", status_code=401))


def test_identical_images_share_one_key() -> None:
    items = operator(images=[IMAGES[0], IMAGES[0], IMAGES[1]]).batch_images()
    assert len({item.key for item in items}) == 2
    assert list(itertools.islice((i.index for i in items), 3)) == [0, 1, 2]
