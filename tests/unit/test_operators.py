"""Operators: validation before any request, deferral, the worker path, every execute_complete branch."""

from __future__ import annotations

import time
from typing import Any
from unittest import mock

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, TaskDeferred

from airflow_vibedream.client import ClientSettings, Prediction
from airflow_vibedream.errors import (
    VibeDreamAuthError,
    VibeDreamError,
    VibeDreamNotFoundError,
    VibeDreamPredictionFailedError,
    VibeDreamServerError,
    VibeDreamSubmissionStateUnknownError,
    VibeDreamTimeoutError,
    VibeDreamValidationError,
)
from airflow_vibedream.operators.vibedream import (
    XCOM_COST_CENTS,
    XCOM_INPUT_FACTS,
    XCOM_PREDICTION_ID,
    VibeDreamGenerateOperator,
    VibeDreamUpscaleImageOperator,
)
from airflow_vibedream.triggers.vibedream import VibeDreamPredictionTrigger
from tests.helpers import COMPLETED, PID, SUBMITTED, FakeTI


def operator(**kwargs: Any) -> VibeDreamUpscaleImageOperator:
    values: dict[str, Any] = {
        "task_id": "upscale",
        "image": "https://example.com/a.jpg",
        "target_resolution": "4k",
        "output_format": "png",
        "poll_interval": 0.01,
        **kwargs,
    }
    return VibeDreamUpscaleImageOperator(**values)


@pytest.fixture
def client() -> mock.MagicMock:
    with mock.patch("airflow_vibedream.hooks.vibedream.VibeDreamHook.get_conn") as get_conn:
        get_conn.return_value.settings = ClientSettings(api_key="k", base_url="http://127.0.0.1:9")
        yield get_conn.return_value


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_resolution": "3k"}, "target_resolution"),
        ({"output_format": "gif"}, "output_format"),
        ({"image": "not-a-url"}, "image"),
        ({"enable_sync_mode": "no"}, "enable_sync_mode"),
        ({"enable_base64_output": True}, "output_path"),
        ({"timeout": -1}, "timeout"),
    ],
)
def test_bad_input_fails_at_construction(kwargs: dict[str, Any], field: str, client: mock.MagicMock) -> None:
    with pytest.raises(VibeDreamValidationError) as info:
        operator(**kwargs)
    assert info.value.field == field and field in str(info.value)
    client.submit.assert_not_called()


def test_templated_bad_input_fails_before_any_request(client: mock.MagicMock) -> None:
    task = operator(target_resolution="{{ params.resolution }}")
    task.target_resolution = "3k"  # what rendering produced
    with pytest.raises(AirflowFailException, match="target_resolution must be one of 2k, 4k, 8k; got '3k'"):
        task.execute({"ti": FakeTI()})
    client.submit.assert_not_called()


def test_deferrable_submits_pushes_the_id_and_defers(client: mock.MagicMock) -> None:
    client.submit.return_value = SUBMITTED
    ti = FakeTI()
    before = time.time()
    with pytest.raises(TaskDeferred) as info:
        operator(deferrable=True, timeout=600).execute({"ti": ti})
    client.submit.assert_called_once_with(
        "image-upscaler",
        {
            "image": "https://example.com/a.jpg",
            "target_resolution": "4k",
            "output_format": "png",
            "enable_base64_output": False,
            "enable_sync_mode": False,
        },
        wait_at_most=600,  # a sync-mode read never outlives the operator's timeout
    )
    # The input's header facts, read before the submit, cross the deferral to verify the outputs.
    assert ti.xcom == {XCOM_PREDICTION_ID: PID, XCOM_COST_CENTS: 2, XCOM_INPUT_FACTS: [640, 480, "PNG"]}
    trigger = info.value.trigger
    assert isinstance(trigger, VibeDreamPredictionTrigger)
    assert trigger.prediction_id == PID and trigger.vibedream_conn_id == "vibedream_default"
    assert before + 600 <= trigger.end_time <= time.time() + 600
    assert info.value.method_name == "execute_complete"


def test_sync_answer_finishes_without_waiting(client: mock.MagicMock) -> None:
    client.submit.return_value = Prediction.from_dict({**COMPLETED.to_dict(), "cost_cents": 2})
    with mock.patch("airflow_vibedream.operators.vibedream.wait_for_prediction") as waited:
        result = operator(deferrable=True, enable_sync_mode=True).execute({"ti": FakeTI()})
    assert result["status"] == "completed" and result["cost_cents"] == 2
    waited.assert_not_called()


def test_worker_path_waits_and_returns_the_contract(client: mock.MagicMock) -> None:
    client.submit.return_value = SUBMITTED
    with mock.patch("airflow_vibedream.operators.vibedream.wait_for_prediction", return_value=COMPLETED):
        result = operator(deferrable=False).execute({"ti": FakeTI()})
    assert result == {
        "id": PID,
        "model_id": "image-upscaler",
        "status": "completed",
        "outputs": ["https://assets.vibedream.test/o.png"],
        "error": None,
        "created_at": "2025-01-15T12:00:00.000Z",
        "completed_at": "2025-01-15T12:00:30.000Z",
        "cost_cents": 2,
    }


def test_unknown_submission_state_is_not_retried(client: mock.MagicMock) -> None:
    client.submit.side_effect = VibeDreamSubmissionStateUnknownError("submission state unknown (ReadTimeout)")
    with pytest.raises(AirflowFailException, match="submission state unknown"):
        operator().execute({"ti": FakeTI()})


def event(
    status: str, message: str = "", prediction: Prediction | None = None, error_type: str | None = None
) -> dict[str, Any]:
    return {
        "status": status,
        "prediction_id": PID,
        "prediction": prediction.to_dict() if prediction else None,
        "message": message,
        "error_type": error_type,
        "status_code": 401 if error_type == "VibeDreamAuthError" else None,
    }


def test_execute_complete_success_returns_the_result_with_cost(client: mock.MagicMock) -> None:
    ti = FakeTI()
    ti.xcom[XCOM_COST_CENTS] = 2
    result = operator().execute_complete({"ti": ti}, event("success", "completed", COMPLETED))
    assert result["id"] == PID and result["outputs"] == COMPLETED.outputs and result["cost_cents"] == 2
    client.get_prediction.assert_not_called()


def test_execute_complete_fetches_omitted_base64_outputs(client: mock.MagicMock) -> None:
    client.get_prediction.return_value = COMPLETED
    payload = event("success", "completed", COMPLETED)
    payload["prediction"].update(outputs=None, outputs_omitted=True)
    assert operator().execute_complete({"ti": FakeTI()}, payload)["outputs"] == COMPLETED.outputs
    client.get_prediction.assert_called_once_with(PID)


@pytest.mark.parametrize(
    ("status", "named_error", "raised", "cause", "words"),
    [
        # Permanent: no retry, exactly as when execute() itself sees the same answer.
        (
            "failed",
            None,
            AirflowFailException,
            VibeDreamPredictionFailedError,
            "flagged by content moderation",
        ),
        ("error", "VibeDreamAuthError", AirflowFailException, VibeDreamAuthError, "HTTP 401"),
        ("error", "VibeDreamNotFoundError", AirflowFailException, VibeDreamNotFoundError, "HTTP 401"),
        # Transient: Airflow may retry, and the retry reconnects to the recorded prediction.
        ("timeout", None, VibeDreamTimeoutError, None, "did not finish"),
        ("error", "VibeDreamServerError", VibeDreamServerError, None, "HTTP 401"),
        ("error", None, VibeDreamError, None, "HTTP 401"),
        ("error", "NotAnErrorOfOurs", VibeDreamError, None, "HTTP 401"),
        ("something-new", None, VibeDreamError, None, "something-new"),
    ],
)
def test_execute_complete_decides_every_event_by_the_one_rule(
    client: mock.MagicMock,
    status: str,
    named_error: str | None,
    raised: type[Exception],
    cause: type[Exception] | None,
    words: str,
) -> None:
    messages = {
        "failed": "Your request was flagged by content moderation. Please modify your prompt.",
        "timeout": f"VibeDream prediction {PID} did not finish before the deadline",
        "error": "VibeDream poll failed: HTTP 401: bad key",
        "something-new": "something-new",
    }
    with pytest.raises(raised, match=words) as info:
        operator().execute_complete({"ti": FakeTI()}, event(status, messages[status], error_type=named_error))
    assert type(info.value) is raised
    if cause is not None:
        assert type(info.value.__cause__) is cause
    assert PID in str(info.value)


def test_generate_operator_submits_any_model(client: mock.MagicMock) -> None:
    client.submit.return_value = Prediction.from_dict({**COMPLETED.to_dict(), "model_id": "other-model"})
    task = VibeDreamGenerateOperator(task_id="gen", model_id="other-model", input={"prompt": "a cat"})
    assert task.execute({"ti": FakeTI()})["model_id"] == "other-model"
    client.submit.assert_called_once_with("other-model", {"prompt": "a cat"}, wait_at_most=1800)


def test_generate_operator_refuses_a_bad_model_id() -> None:
    with pytest.raises(VibeDreamValidationError, match="model_id"):
        VibeDreamGenerateOperator(task_id="gen", model_id="a/b", input={})
