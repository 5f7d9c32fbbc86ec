"""The API client: validation, parsing, error mapping and the retry policy (HTTP mocked with respx)."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest
import respx

from airflow_vibedream.client import (
    AsyncVibeDreamClient,
    ClientSettings,
    Prediction,
    RetryPolicy,
    UpscaleRequest,
    VibeDreamClient,
)
from airflow_vibedream.errors import (
    VibeDreamAuthError,
    VibeDreamConfigError,
    VibeDreamNotFoundError,
    VibeDreamProtocolError,
    VibeDreamRateLimitedError,
    VibeDreamServerError,
    VibeDreamSubmissionStateUnknownError,
    VibeDreamTimeoutError,
    VibeDreamTransportError,
    VibeDreamValidationError,
)
from airflow_vibedream.waiting.blocking import wait_for_prediction

BASE = "https://api.vibedream.test"
SUBMIT_URL = f"{BASE}/api/v1/models/image-upscaler/generate"
PRED_ID = "550e8400-e29b-41d4-a716-446655440000"
POLL_URL = f"{BASE}/api/v1/predictions/{PRED_ID}"
KEY = "unit-secret-key"

SUBMITTED = {
    "id": PRED_ID,
    "status": "processing",
    "statusUrl": POLL_URL,
    "estimatedTime": "Fast & Efficient",
    "costCents": 2,
    "createdAt": "2025-01-15T12:00:00.000Z",
}
COMPLETED = {
    "id": PRED_ID,
    "modelId": "image-upscaler",
    "modelName": "WaveSpeed AI Image Upscaler",
    "status": "completed",
    "outputs": [f"https://assets.vibedream.test/outputs/{PRED_ID}/1736942400000-0.png"],
    "error": None,
    "createdAt": "2025-01-15T12:00:00.000Z",
    "completedAt": "2025-01-15T12:00:30.000Z",
}
REQUEST = UpscaleRequest("https://example.com/a.jpg", "2k", "jpeg")


def settings(**kwargs: object) -> ClientSettings:
    retry = RetryPolicy(max_retries=3, initial_backoff=0.001, max_backoff=0.01)
    return ClientSettings(api_key=KEY, base_url=BASE, retry=retry, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def client() -> VibeDreamClient:
    return VibeDreamClient(settings())


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"target_resolution": "3k"}, "target_resolution", "2k, 4k, 8k"),
        ({"output_format": "gif"}, "output_format", "jpeg, png, webp"),
        ({"image": "not-a-url"}, "image", "http(s) URL"),
        ({"image": "ftp://host/a.png"}, "image", "http(s) URL"),
        ({"image": ""}, "image", "http(s) URL"),
        ({"enable_sync_mode": "yes"}, "enable_sync_mode", "true or false"),
        ({"enable_base64_output": 1}, "enable_base64_output", "true or false"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict[str, object], field: str, words: str) -> None:
    values = {
        "image": "https://example.com/a.jpg",
        "target_resolution": "2k",
        "output_format": "png",
        **kwargs,
    }
    with pytest.raises(VibeDreamValidationError) as info:
        UpscaleRequest(**values)  # type: ignore[arg-type]
    assert info.value.field == field
    assert str(info.value).startswith(field)
    assert words in str(info.value)


def test_payload_is_the_documented_body() -> None:
    assert REQUEST.to_payload() == {
        "image": "https://example.com/a.jpg",
        "target_resolution": "2k",
        "output_format": "jpeg",
        "enable_base64_output": False,
        "enable_sync_mode": False,
    }


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"api_key": ""}, "api_key"),
        ({"base_url": "api.vibedream.ai"}, "base_url"),
        ({"base_url": "http://api.example.com"}, "plain http"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], words: str) -> None:
    values: dict[str, object] = {"api_key": KEY, "base_url": BASE, **kwargs}
    with pytest.raises(VibeDreamConfigError, match=words):
        ClientSettings(**values)  # type: ignore[arg-type]


def test_plain_http_is_allowed_on_loopback_or_when_asked() -> None:
    assert ClientSettings(api_key=KEY, base_url="http://127.0.0.1:8080/").base_url == "http://127.0.0.1:8080"
    assert ClientSettings(api_key=KEY, base_url="http://localhost:1").base_url == "http://localhost:1"
    ClientSettings(api_key=KEY, base_url="http://api.example.com", allow_insecure_http=True)


def test_settings_repr_hides_the_key() -> None:
    assert KEY not in repr(settings())


# -- parsing ---------------------------------------------------------------------------------------


def test_prediction_parses_the_documented_json() -> None:
    prediction = Prediction.from_api(COMPLETED)
    assert prediction.is_terminal and prediction.succeeded
    assert prediction.model_id == "image-upscaler"
    assert prediction.to_result() == {
        "id": PRED_ID,
        "model_id": "image-upscaler",
        "status": "completed",
        "outputs": COMPLETED["outputs"],
        "error": None,
        "created_at": "2025-01-15T12:00:00.000Z",
        "completed_at": "2025-01-15T12:00:30.000Z",
        "cost_cents": None,
    }
    assert prediction.with_cost(2).cost_cents == 2
    assert Prediction.from_dict(prediction.to_dict()) == prediction


def test_submit_answer_parses(client: VibeDreamClient) -> None:
    with respx.mock:
        route = respx.post(SUBMIT_URL).respond(200, json=SUBMITTED)
        prediction = client.upscale(REQUEST)
    assert prediction.status == "processing" and not prediction.is_terminal
    assert prediction.cost_cents == 2
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.read() == httpx.Request("POST", SUBMIT_URL, json=REQUEST.to_payload()).read()


# -- errors and retries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, VibeDreamValidationError),
        (401, VibeDreamAuthError),
        (403, VibeDreamAuthError),
        (404, VibeDreamNotFoundError),
    ],
)
def test_permanent_errors_fail_at_once_with_the_api_message(
    client: VibeDreamClient, status: int, error_type: type[Exception]
) -> None:
    with respx.mock:
        route = respx.get(POLL_URL).respond(status, json={"error": "the API's own words"})
        with pytest.raises(error_type, match="the API's own words") as info:
            client.get_prediction(PRED_ID)
    assert route.call_count == 1
    assert getattr(info.value, "status_code", None) == status


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_polls_retry_transient_statuses(client: VibeDreamClient, status: int) -> None:
    with respx.mock:
        route = respx.get(POLL_URL)
        route.side_effect = [
            httpx.Response(status, json={"error": "busy"}),
            httpx.Response(200, json=COMPLETED),
        ]
        assert client.get_prediction(PRED_ID).succeeded
    assert route.call_count == 2


@pytest.mark.parametrize(
    "error", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("dropped")]
)
def test_polls_retry_network_errors(client: VibeDreamClient, error: Exception) -> None:
    with respx.mock:
        route = respx.get(POLL_URL)
        route.side_effect = [error, httpx.Response(200, json=COMPLETED)]
        assert client.get_prediction(PRED_ID).succeeded
    assert route.call_count == 2


def test_retries_stop_after_max_retries(client: VibeDreamClient) -> None:
    with respx.mock:
        route = respx.get(POLL_URL).respond(503, json={"error": "down"})
        with pytest.raises(VibeDreamServerError, match="down"):
            client.get_prediction(PRED_ID)
    assert route.call_count == 4  # 1 + max_retries


def test_submit_retries_429_and_connect_errors(client: VibeDreamClient) -> None:
    with respx.mock:
        route = respx.post(SUBMIT_URL)
        route.side_effect = [
            httpx.Response(429, json={"error": "slow down"}, headers={"Retry-After": "0"}),
            httpx.ConnectError("refused"),
            httpx.Response(200, json=SUBMITTED),
        ]
        assert client.upscale(REQUEST).id == PRED_ID
    assert route.call_count == 3


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, json={"error": "boom"}),
        httpx.Response(502, text="bad gateway"),
        httpx.ReadTimeout("no answer"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
)
def test_ambiguous_submit_failure_is_not_resubmitted(client: VibeDreamClient, answer: object) -> None:
    with respx.mock:
        route = respx.post(SUBMIT_URL)
        route.side_effect = [answer, httpx.Response(200, json=SUBMITTED)]
        with pytest.raises(VibeDreamSubmissionStateUnknownError, match="submission state unknown") as info:
            client.upscale(REQUEST)
    assert route.call_count == 1
    assert "NOT resubmitted" in str(info.value)


def test_retry_after_is_honoured(client: VibeDreamClient) -> None:
    policy = RetryPolicy(initial_backoff=0.001, max_backoff=0.001)
    assert policy.backoff(1, VibeDreamRateLimitedError("x", retry_after=3.0)) == 3.0
    assert 0 <= policy.backoff(5, VibeDreamServerError("x")) <= 0.001


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Retry-After": "7"}, {}, 7.0),
        ({}, {"error": "slow down", "retry_after": 4}, 4.0),
        ({"Retry-After": "HTTP-date 30 s from now"}, {}, 30.0),
    ],
)
def test_retry_after_forms_are_parsed(
    client: VibeDreamClient, headers: dict[str, str], body: dict[str, object], expected: float
) -> None:
    if headers.get("Retry-After", "").startswith("HTTP-date"):
        # Made here, not at collection time, so the date is still 30 s ahead when the test runs.
        headers = {"Retry-After": email.utils.formatdate(time.time() + 30, usegmt=True)}
    with respx.mock:
        respx.get(POLL_URL).respond(429, json=body, headers=headers)
        no_retry = VibeDreamClient(
            ClientSettings(api_key=KEY, base_url=BASE, retry=RetryPolicy(max_retries=0))
        )
        with pytest.raises(VibeDreamRateLimitedError) as info:
            no_retry.get_prediction(PRED_ID)
    assert info.value.retry_after == pytest.approx(expected, abs=2)


def test_transport_error_says_whether_the_request_was_sent(client: VibeDreamClient) -> None:
    no_retry = VibeDreamClient(ClientSettings(api_key=KEY, base_url=BASE, retry=RetryPolicy(max_retries=0)))
    with respx.mock:
        respx.get(POLL_URL).mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(VibeDreamTransportError) as info:
            no_retry.get_prediction(PRED_ID)
    assert info.value.request_sent is False


def test_wait_for_prediction_times_out_with_the_id(client: VibeDreamClient) -> None:
    with respx.mock:
        respx.get(POLL_URL).respond(200, json={**COMPLETED, "status": "processing", "outputs": None})
        with pytest.raises(VibeDreamTimeoutError) as info:
            wait_for_prediction(client, PRED_ID, poll_interval=0.01, deadline=time.time() + 0.05)
    assert info.value.prediction_id == PRED_ID
    assert PRED_ID in str(info.value)


def test_wait_for_prediction_reports_status_changes(client: VibeDreamClient) -> None:
    seen: list[str] = []
    processing = {**COMPLETED, "status": "processing", "outputs": None, "completedAt": None}
    with respx.mock:
        respx.get(POLL_URL).side_effect = [
            httpx.Response(200, json=processing),
            httpx.Response(200, json=processing),
            httpx.Response(200, json=COMPLETED),
        ]
        result = wait_for_prediction(
            client, PRED_ID, poll_interval=0.001, on_status_change=lambda p, elapsed: seen.append(p.status)
        )
    assert result.succeeded
    assert seen == ["processing", "completed"]


# -- the async client shares the behaviour ---------------------------------------------------------


async def test_async_client_polls_and_retries() -> None:
    async with AsyncVibeDreamClient(settings()) as client:
        with respx.mock:
            route = respx.get(POLL_URL)
            route.side_effect = [httpx.Response(503), httpx.Response(200, json=COMPLETED)]
            prediction = await client.get_prediction(PRED_ID)
    assert prediction.succeeded and route.call_count == 2


async def test_async_submit_is_not_resubmitted_after_ambiguous_failure() -> None:
    async with AsyncVibeDreamClient(settings()) as client:
        with respx.mock:
            route = respx.post(SUBMIT_URL).mock(side_effect=httpx.ReadTimeout("no answer"))
            with pytest.raises(VibeDreamSubmissionStateUnknownError):
                await client.upscale(REQUEST)
    assert route.call_count == 1


def test_model_id_cannot_change_the_route(client: VibeDreamClient) -> None:
    with pytest.raises(VibeDreamValidationError, match="model_id"):
        client.submit("../admin", {})


# -- sync mode, redirects, answer size --------------------------------------------------------------


def test_sync_mode_reads_longer_than_the_server_waits(client: VibeDreamClient) -> None:
    with respx.mock:
        route = respx.post(SUBMIT_URL).respond(200, json={**COMPLETED, "costCents": 2})
        client.upscale(UpscaleRequest("https://example.com/a.jpg", "2k", "png", enable_sync_mode=True))
    timeout = route.calls.last.request.extensions["timeout"]
    assert timeout["read"] == client.settings.sync_wait_seconds + 30


def test_sync_mode_504_with_the_id_falls_back_to_polling(client: VibeDreamClient) -> None:
    with respx.mock:
        respx.post(SUBMIT_URL).respond(504, json=SUBMITTED)
        respx.get(POLL_URL).respond(200, json=COMPLETED)
        submitted = client.upscale(
            UpscaleRequest("https://example.com/a.jpg", "2k", "png", enable_sync_mode=True)
        )
        assert submitted.id == PRED_ID and submitted.status == "processing"
        assert wait_for_prediction(client, submitted.id, poll_interval=0.01).succeeded


def test_504_without_an_id_leaves_the_state_unknown(client: VibeDreamClient) -> None:
    with respx.mock:
        route = respx.post(SUBMIT_URL).respond(504, text="gateway timeout")
        with pytest.raises(VibeDreamSubmissionStateUnknownError):
            client.upscale(REQUEST)
    assert route.call_count == 1


@pytest.mark.parametrize("client_kind", ["sync", "async"])
@pytest.mark.parametrize(
    "elsewhere",
    [
        f"https://elsewhere.test/api/v1/predictions/{PRED_ID}",  # another host
        f"http://api.vibedream.test/api/v1/predictions/{PRED_ID}",  # another scheme
        f"https://api.vibedream.test:8443/api/v1/predictions/{PRED_ID}",  # another port
    ],
)
async def test_a_poll_redirected_off_the_api_origin_is_never_followed(
    client_kind: str, elsewhere: str
) -> None:
    no_retry = ClientSettings(api_key=KEY, base_url=BASE, retry=RetryPolicy(max_retries=0))
    with respx.mock:
        respx.get(POLL_URL).respond(307, headers={"Location": elsewhere})
        other = respx.get(elsewhere).respond(200, json=COMPLETED)
        if client_kind == "sync":
            with pytest.raises(VibeDreamProtocolError, match="off the API's origin"):
                VibeDreamClient(no_retry).get_prediction(PRED_ID)
        else:
            async with AsyncVibeDreamClient(no_retry) as async_client:
                with pytest.raises(VibeDreamProtocolError, match="off the API's origin"):
                    await async_client.get_prediction(PRED_ID)
    assert not other.called  # the other service got no request (and so never the key)


@pytest.mark.parametrize("client_kind", ["sync", "async"])
async def test_a_poll_redirected_on_the_api_origin_is_followed_with_the_key(client_kind: str) -> None:
    moved = f"{POLL_URL}?moved=1"
    with respx.mock:
        respx.get(POLL_URL, params={"moved": "1"}).respond(200, json=COMPLETED)
        respx.get(POLL_URL).respond(307, headers={"Location": moved})
        if client_kind == "sync":
            assert VibeDreamClient(settings()).get_prediction(PRED_ID).succeeded
        else:
            async with AsyncVibeDreamClient(settings()) as async_client:
                assert (await async_client.get_prediction(PRED_ID)).succeeded
        assert respx.calls.last.request.headers["authorization"] == f"Bearer {KEY}"


def test_oversized_answer_is_refused(client: VibeDreamClient) -> None:
    small = VibeDreamClient(ClientSettings(api_key=KEY, base_url=BASE, max_response_bytes=1000))
    with respx.mock:
        respx.get(POLL_URL).respond(200, json={**COMPLETED, "outputs": ["x" * 5000]})
        with pytest.raises(VibeDreamProtocolError, match="max_response_bytes"):
            small.get_prediction(PRED_ID)
