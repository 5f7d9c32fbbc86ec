"""The single-job lifecycle: a later try adopts a recorded prediction only when it was made for the
very same input (fingerprint), and every other case submits anew and says why in the task log."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, TaskDeferred

from airflow_vibedream.client import ClientSettings, Prediction
from airflow_vibedream.errors import VibeDreamNotFoundError, VibeDreamSubmissionStateUnknownError
from airflow_vibedream.jobs.fingerprint import JobSpec, fingerprint_of, what_changed
from airflow_vibedream.jobs.signing import MAC_FIELD, RecordSigner
from airflow_vibedream.jobs.single import STATE_KEY
from airflow_vibedream.operators.vibedream import XCOM_PREDICTION_ID, VibeDreamUpscaleImageOperator
from tests.helpers import COMPLETED, NEW_PID, PID, SUBMITTED, FakeStateStore, FakeTI, recorded


def operator(**kwargs: Any) -> VibeDreamUpscaleImageOperator:
    values: dict[str, Any] = {
        "task_id": "upscale",
        "image": "https://example.com/a.jpg",
        "target_resolution": "2k",
        "output_format": "png",
        "deferrable": True,
        **kwargs,
    }
    return VibeDreamUpscaleImageOperator(**values)


#: The deployment's signer in these tests: the connection's API key is "k", no record_secret set.
SIGNER = RecordSigner("k")


class AnotherRun(FakeTI):
    """The same task in another DAG run (yesterday's, whose input was other bytes under the same URL)."""

    run_id = "scheduled__yesterday"


def record_of(task: VibeDreamUpscaleImageOperator, prediction_id: str = PID) -> dict[str, Any]:
    """What a try of ``task`` would have recorded for ``prediction_id`` (signed, as tasks sign)."""
    return recorded(SIGNER, unsigned_record_of(task, prediction_id))


def unsigned_record_of(task: VibeDreamUpscaleImageOperator, prediction_id: str = PID) -> dict[str, Any]:
    """The same record as anyone could write it through the REST API: right in every field but the MAC."""
    spec = task.job_spec()
    return {
        "fingerprint": spec.fingerprint,
        "asked": dict(spec.asked),
        "prediction_id": prediction_id,
        "cost_cents": 2,
        "state": "submitted",
        "error": None,
    }


@pytest.fixture
def client() -> mock.MagicMock:
    with (
        mock.patch("airflow_vibedream.hooks.vibedream.VibeDreamHook.get_conn") as get_conn,
        mock.patch("airflow_vibedream.jobs.single.first_gone_output", return_value=None),
    ):
        get_conn.return_value.submit.return_value = Prediction(id=NEW_PID, status="processing", cost_cents=2)
        get_conn.return_value.settings = ClientSettings(api_key="k", base_url="http://127.0.0.1:9")
        yield get_conn.return_value


def run(task: VibeDreamUpscaleImageOperator, store: FakeStateStore | None) -> tuple[Any, FakeTI]:
    ti = FakeTI()
    context: dict[str, Any] = {"ti": ti}
    if store is not None:
        context["task_state_store"] = store
    try:
        return task.execute(context), ti  # type: ignore[arg-type]
    except TaskDeferred as deferred:
        return deferred, ti


def test_the_fingerprint_covers_every_field_and_the_model() -> None:
    asked = {"image": "s3://b/k.png", "target_resolution": "2k", "output_format": "png"}
    base = fingerprint_of("image-upscaler", asked)
    assert base == fingerprint_of("image-upscaler", dict(reversed(list(asked.items()))))  # order-free
    assert base != fingerprint_of("other-model", asked)
    for name, value in (
        ("image", "s3://b/other.png"),
        ("target_resolution", "4k"),
        ("output_format", "jpeg"),
    ):
        assert base != fingerprint_of("image-upscaler", {**asked, name: value}), name
    assert base != fingerprint_of("image-upscaler", {**asked, "enable_sync_mode": True})
    assert what_changed(asked, {**asked, "target_resolution": "4k"}) == "target_resolution: '2k' -> '4k'"


def test_an_s3_image_is_fingerprinted_as_named_not_as_presigned() -> None:
    task = operator(image="s3://bucket/photo.png")
    assert task.job_spec().asked["image"] == "s3://bucket/photo.png"
    assert task.job_spec() == JobSpec("image-upscaler", task.job_spec().asked)


def test_first_try_records_the_prediction_with_its_fingerprint_before_deferring(
    client: mock.MagicMock,
) -> None:
    store = FakeStateStore()
    task = operator()
    deferred, ti = run(task, store)
    assert isinstance(deferred, TaskDeferred)
    assert store.values[STATE_KEY] == record_of(task, NEW_PID)
    assert ti.xcom[XCOM_PREDICTION_ID] == NEW_PID


def test_retry_reconnects_to_a_running_prediction_made_for_the_same_input(client: mock.MagicMock) -> None:
    client.get_prediction.return_value = SUBMITTED
    task = operator()
    deferred, ti = run(task, FakeStateStore({STATE_KEY: record_of(task)}))
    assert deferred.trigger.prediction_id == PID
    client.submit.assert_not_called()
    assert ti.xcom[XCOM_PREDICTION_ID] == PID


@pytest.mark.parametrize(
    "forge",
    [
        lambda record: {k: v for k, v in record.items() if k != MAC_FIELD},  # no MAC
        lambda record: {**record, MAC_FIELD: "0" * 64},  # a made-up one
        lambda record: RecordSigner("a guessed key").signed(record),  # signed under another key
        lambda record: recorded(SIGNER, record, ti=AnotherRun()),  # genuine, from another task instance
        lambda record: {**record, "cost_cents": 0},  # a signed record, altered
    ],
    ids=["no MAC", "made-up MAC", "another key", "altered", "another task instance"],
)
def test_a_record_this_deployment_did_not_sign_is_never_adopted(
    client: mock.MagicMock, caplog: pytest.LogCaptureFixture, forge: Any
) -> None:
    # Written by a "user" account through the REST API: the fingerprint is right (anyone can compute
    # it from the input), the prediction is someone else's job.
    client.get_prediction.return_value = COMPLETED
    task = operator()
    store = FakeStateStore({STATE_KEY: forge(record_of(task))})
    deferred, _ = run(task, store)
    client.get_prediction.assert_not_called()  # the named job is not even looked at
    client.submit.assert_called_once()
    assert deferred.trigger.prediction_id == NEW_PID
    assert SIGNER.verified(store.values[STATE_KEY])["prediction_id"] == NEW_PID
    assert "is not one this deployment signed" in caplog.text or "for another task instance" in caplog.text


def test_retry_finishes_at_once_when_the_prediction_completed(client: mock.MagicMock) -> None:
    client.get_prediction.return_value = COMPLETED
    task = operator()
    result, _ = run(task, FakeStateStore({STATE_KEY: record_of(task)}))
    assert result["id"] == PID and result["status"] == "completed" and result["cost_cents"] == 2
    client.submit.assert_not_called()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"target_resolution": "4k"}, "target_resolution: '2k' -> '4k'"),
        (
            {"image": "https://example.com/b.jpg"},
            "image: 'https://example.com/a.jpg' -> 'https://example.com/b.jpg'",
        ),
        ({"output_format": "jpeg"}, "output_format: 'png' -> 'jpeg'"),
    ],
)
def test_a_changed_input_never_adopts_the_earlier_prediction(
    client: mock.MagicMock, capsys: pytest.CaptureFixture[str], change: dict[str, str], words: str
) -> None:
    store = FakeStateStore({STATE_KEY: record_of(operator())})
    deferred, _ = run(operator(**change), store)
    client.get_prediction.assert_not_called()  # the earlier job is not even looked at
    client.submit.assert_called_once()
    assert deferred.trigger.prediction_id == NEW_PID
    assert store.values[STATE_KEY]["prediction_id"] == NEW_PID
    assert (
        f"VibeDream input changed since prediction {PID} was submitted ({words})" in capsys.readouterr().out
    )


def test_a_record_without_fingerprint_is_not_adopted(client: mock.MagicMock) -> None:
    # What an older provider wrote: it cannot prove which input it was made for.
    store = FakeStateStore({STATE_KEY: {"prediction_id": PID, "cost_cents": 2, "model_id": "image-upscaler"}})
    run(operator(), store)
    client.get_prediction.assert_not_called()
    client.submit.assert_called_once()


@pytest.mark.parametrize(
    "answer",
    [Prediction(id=PID, status="failed", error="flagged"), VibeDreamNotFoundError("gone", status_code=404)],
    ids=["failed", "not-found"],
)
def test_retry_submits_anew_when_the_recorded_prediction_cannot_serve(
    client: mock.MagicMock, answer: Prediction | Exception
) -> None:
    if isinstance(answer, Exception):
        client.get_prediction.side_effect = answer
    else:
        client.get_prediction.return_value = answer
    task = operator()
    store = FakeStateStore({STATE_KEY: record_of(task)})
    deferred, _ = run(task, store)
    client.submit.assert_called_once()
    assert deferred.trigger.prediction_id == NEW_PID
    assert store.values[STATE_KEY]["prediction_id"] == NEW_PID


def test_a_completed_prediction_whose_outputs_expired_is_submitted_anew(
    client: mock.MagicMock, capsys: pytest.CaptureFixture[str]
) -> None:
    client.get_prediction.return_value = COMPLETED
    task = operator()
    gone = (COMPLETED.outputs[0], 410)  # type: ignore[index]
    with mock.patch("airflow_vibedream.jobs.single.first_gone_output", return_value=gone):
        deferred, _ = run(task, FakeStateStore({STATE_KEY: record_of(task)}))
    client.submit.assert_called_once()
    assert deferred.trigger.prediction_id == NEW_PID
    log = capsys.readouterr().out
    assert f"Outputs of stored VibeDream prediction {PID} can no longer be fetched" in log
    assert "HTTP 410" in log


def test_an_unknown_submission_state_fails_without_retry_and_says_so_to_the_next_try(
    client: mock.MagicMock,
) -> None:
    client.submit.side_effect = VibeDreamSubmissionStateUnknownError(
        "submission state unknown (HTTP 200 ...)"
    )
    store = FakeStateStore()
    with pytest.raises(AirflowFailException, match="submission state unknown"):
        run(operator(), store)
    record = SIGNER.verified(store.values[STATE_KEY])
    assert record is not None and record["state"] == "unknown" and record["prediction_id"] is None
    # A clear or a retry of the task does not send it again.
    client.submit.reset_mock()
    with pytest.raises(AirflowFailException, match=r"never a prediction id .*HTTP 200"):
        run(operator(), store)
    client.submit.assert_not_called()


def test_the_intent_is_recorded_before_the_post_without_a_ledger(client: mock.MagicMock) -> None:
    """On Airflow 3.3+ without output_path, the task's own store holds the intent: a try killed while
    its POST is in flight leaves it behind, and the next try does not pay again."""
    store = FakeStateStore()
    seen_at_post: list[Any] = []
    client.submit.side_effect = lambda *a, **k: (
        seen_at_post.append(SIGNER.verified(store.values.get(STATE_KEY))),
        Prediction(id=NEW_PID, status="processing", cost_cents=2),
    )[1]
    run(operator(), store)
    assert seen_at_post[0]["state"] == "intent" and seen_at_post[0]["prediction_id"] is None
    assert SIGNER.verified(store.values[STATE_KEY])["prediction_id"] == NEW_PID  # type: ignore[index]


def test_an_intent_left_by_a_killed_try_is_state_unknown_unless_asked(client: mock.MagicMock) -> None:
    task = operator()
    intent = recorded(SIGNER, {**unsigned_record_of(task), "prediction_id": None, "state": "intent"})
    with pytest.raises(AirflowFailException, match="killed while its submit was in flight"):
        run(task, FakeStateStore({STATE_KEY: intent}))
    client.submit.assert_not_called()
    deferred, _ = run(operator(resubmit_unknown=True), FakeStateStore({STATE_KEY: intent}))
    client.submit.assert_called_once()
    assert deferred.trigger.prediction_id == NEW_PID


def test_a_refused_submit_withdraws_the_intent(client: mock.MagicMock) -> None:
    from airflow_vibedream.errors import VibeDreamValidationError

    client.submit.side_effect = VibeDreamValidationError("HTTP 422: bad image", field="image")
    store = FakeStateStore()
    with pytest.raises(AirflowFailException, match="422"):
        run(operator(), store)
    assert STATE_KEY not in store.values and store.writes == [STATE_KEY, f"-{STATE_KEY}"]


def test_durable_false_ignores_the_store(client: mock.MagicMock) -> None:
    task = operator(durable=False)
    store = FakeStateStore({STATE_KEY: record_of(task)})
    run(task, store)
    client.get_prediction.assert_not_called()
    client.submit.assert_called_once()
    assert store.values[STATE_KEY]["prediction_id"] == PID  # untouched


def test_without_task_state_store_every_try_submits_and_says_so(
    client: mock.MagicMock, capsys: pytest.CaptureFixture[str]
) -> None:
    run(operator(), None)
    client.submit.assert_called_once()
    assert "task_state_store is not available" in capsys.readouterr().out
