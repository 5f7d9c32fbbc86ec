"""The VibeDream API itself: validated requests, the ``Prediction`` model, typed errors, the retry
policy, and sync + async calls over httpx.

Nothing here imports Airflow, so the same client serves the worker, the triggerer, scripts and the
benchmarks. Sync and async calls share everything but the ``await``: an :class:`_ApiCall` builds
the ``httpx.Request`` and turns the response (or the transport error) into a result or a typed
error, and :class:`RetryPolicy` decides which of those errors are worth another attempt.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx
import tenacity

if TYPE_CHECKING:
    import aiohttp

from airflow_vibedream import __version__
from airflow_vibedream.constants import (
    DEFAULT_BASE_URL,
    DEFAULT_POLL_INTERVAL,
    GENERATE_PATH,
    OUTPUT_FORMATS,
    PREDICTION_PATH,
    STATUS_COMPLETED,
    STATUS_FAILED,
    TARGET_RESOLUTIONS,
    TERMINAL_STATUSES,
    UPSCALER_MODEL_ID,
)
from airflow_vibedream.errors import (
    VibeDreamAuthError,
    VibeDreamConfigError,
    VibeDreamError,
    VibeDreamNotFoundError,
    VibeDreamPredictionFailedError,
    VibeDreamProtocolError,
    VibeDreamRateLimitedError,
    VibeDreamServerError,
    VibeDreamSubmissionStateUnknownError,
    VibeDreamTimeoutError,
    VibeDreamTransportError,
    VibeDreamValidationError,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Requests: validation before anything is sent
# --------------------------------------------------------------------------------------------------


def validate_choice(field_name: str, value: Any, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise a validation error naming the field."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise VibeDreamValidationError(
            f"{field_name} must be one of {', '.join(allowed)}; got {value!r}", field=field_name
        )
    return value


def validate_bool(field_name: str, value: Any) -> bool:
    """Return ``value`` if it is a real boolean (not a truthy string), else raise naming the field."""
    if not isinstance(value, bool):
        raise VibeDreamValidationError(f"{field_name} must be true or false; got {value!r}", field=field_name)
    return value


def validate_http_url(field_name: str, value: Any) -> str:
    """Return ``value`` if it is an absolute http(s) URL with a host, else raise naming the field."""
    if not isinstance(value, str) or not value.strip():
        raise VibeDreamValidationError(
            f"{field_name} must be an http(s) URL of an image; got {value!r}", field=field_name
        )
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise VibeDreamValidationError(
            f"{field_name} must be an http(s) URL of an image (e.g. https://example.com/photo.jpg); "
            f"got {value!r}",
            field=field_name,
        )
    return value.strip()


@dataclass(frozen=True)
class UpscaleRequest:
    """The input of the ``image-upscaler`` model, validated on construction.

    :param image: public http(s) URL of the image (JPEG, PNG, GIF or WebP).
    :param target_resolution: ``2k``, ``4k`` or ``8k`` (long edge 2048, 3840 or 7680 px).
    :param output_format: ``jpeg``, ``png`` or ``webp``.
    :param enable_base64_output: return the image as base64 text instead of a download URL.
    :param enable_sync_mode: let the API wait for the result before answering the submit.
    """

    image: str
    target_resolution: str
    output_format: str
    enable_base64_output: bool = False
    enable_sync_mode: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "image", validate_http_url("image", self.image))
        validate_choice("target_resolution", self.target_resolution, tuple(TARGET_RESOLUTIONS))
        validate_choice("output_format", self.output_format, OUTPUT_FORMATS)
        validate_bool("enable_base64_output", self.enable_base64_output)
        validate_bool("enable_sync_mode", self.enable_sync_mode)

    def to_payload(self) -> dict[str, Any]:
        """The JSON body of the generate call."""
        return {
            "image": self.image,
            "target_resolution": self.target_resolution,
            "output_format": self.output_format,
            "enable_base64_output": self.enable_base64_output,
            "enable_sync_mode": self.enable_sync_mode,
        }


def validate_model_id(model_id: Any) -> str:
    """A model id is one URL path segment: refuse anything that would change the route."""
    if not isinstance(model_id, str) or not model_id or "/" in model_id or model_id.strip() != model_id:
        raise VibeDreamValidationError(
            f"model_id must be a model name such as {UPSCALER_MODEL_ID!r}; got {model_id!r}",
            field="model_id",
        )
    return model_id


# --------------------------------------------------------------------------------------------------
# The Prediction model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One prediction as the API reports it (submit answer or poll answer).

    :param id: the prediction's UUID.
    :param status: ``processing``, ``completed`` or ``failed`` (an unknown status counts as running).
    :param model_id: the model that ran it (absent from the submit answer).
    :param outputs: download URLs (or base64 strings) when completed, else None.
    :param error: the API's error text when failed.
    :param created_at: ISO 8601 submit time.
    :param completed_at: ISO 8601 finish time, None while processing.
    :param cost_cents: the price of the run, as the submit answer states it.
    :param status_url: where the API says the prediction can be polled.
    """

    id: str
    status: str
    model_id: str | None = None
    model_name: str | None = None
    outputs: list[str] | None = None
    error: str | None = None
    created_at: str | None = None
    completed_at: str | None = None
    cost_cents: int | None = None
    status_url: str | None = None

    @classmethod
    def from_api(cls, body: Any) -> Prediction:
        """Parse the API's camelCase JSON; raise :class:`VibeDreamProtocolError` if it is not one."""
        if not isinstance(body, Mapping) or not body.get("id") or not body.get("status"):
            raise VibeDreamProtocolError(
                f"VibeDream answered with something that is not a prediction: {_shorten(body)}"
            )
        outputs = body.get("outputs")
        cost = body.get("costCents")
        return cls(
            id=str(body["id"]),
            status=str(body["status"]),
            model_id=body.get("modelId"),
            model_name=body.get("modelName"),
            outputs=[str(o) for o in outputs] if isinstance(outputs, list) else None,
            error=body.get("error"),
            created_at=body.get("createdAt"),
            completed_at=body.get("completedAt"),
            cost_cents=int(cost) if isinstance(cost, (int, float)) else None,
            status_url=body.get("statusUrl"),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prediction:
        """Rebuild from :meth:`to_dict` (trigger events, XCom)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == STATUS_COMPLETED

    @property
    def failed(self) -> bool:
        return self.status == STATUS_FAILED

    def with_cost(self, cost_cents: int | None) -> Prediction:
        """Poll answers carry no cost; keep the one the submit answer stated."""
        if self.cost_cents is not None or cost_cents is None:
            return self
        return replace(self, cost_cents=cost_cents)

    def to_dict(self) -> dict[str, Any]:
        """Every field, snake_case, JSON-serialisable."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def to_result(self) -> dict[str, Any]:
        """The operators' XCom return value (the provider's public contract)."""
        return {
            "id": self.id,
            "model_id": self.model_id,
            "status": self.status,
            "outputs": list(self.outputs) if self.outputs is not None else None,
            "error": self.error,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "cost_cents": self.cost_cents,
        }


# --------------------------------------------------------------------------------------------------
# Settings and retry policy
# --------------------------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures get another attempt, and how long to wait before it.

    Waits are capped exponential backoff with full jitter (``uniform(0, min(cap, base * 2**n))``),
    never shorter than what the server asked for with ``Retry-After``.

    :param max_retries: attempts after the first one (0 disables retries).
    :param initial_backoff: the first backoff ceiling, seconds.
    :param max_backoff: the backoff ceiling, seconds.
    """

    max_retries: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        if type(self.max_retries) is not int or self.max_retries < 0:
            raise VibeDreamConfigError(f"max_retries must be a whole number >= 0; got {self.max_retries!r}")

    @staticmethod
    def is_retryable(exc: BaseException) -> bool:
        """Transient errors. Errors a submit must not retry were already turned into
        :class:`VibeDreamSubmissionStateUnknownError` by the call, which is not retryable."""
        return isinstance(exc, (VibeDreamRateLimitedError, VibeDreamServerError, VibeDreamTransportError))

    def backoff(self, attempt_number: int, exc: BaseException | None) -> float:
        ceiling = min(self.max_backoff, self.initial_backoff * (2 ** (attempt_number - 1)))
        wait = random.uniform(0, ceiling)
        server_asked = getattr(exc, "retry_after", None)
        if server_asked is not None:
            wait = max(wait, server_asked)
        return wait

    def log_retry(self, description: str, exc: BaseException | None, retry_number: int, delay: float) -> None:
        log.warning(
            "VibeDream %s failed (%s); retry %d of %d in %.1fs",
            description,
            exc,
            retry_number,
            self.max_retries,
            delay,
        )

    def tenacity_kwargs(self, description: str, attempts_made: int = 0) -> dict[str, Any]:
        """Arguments shared by ``tenacity.Retrying`` and ``tenacity.AsyncRetrying``.

        :param description: what is tried, for the log line before each retry.
        :param attempts_made: attempts already made (and failed) before tenacity takes over.
        """

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return self.backoff(state.attempt_number + attempts_made, exc)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.log_retry(description, exc, state.attempt_number + attempts_made, state.upcoming_sleep)

        return {
            "retry": tenacity.retry_if_exception(self.is_retryable),
            "stop": tenacity.stop_after_attempt(self.max_retries + 1 - attempts_made),
            "wait": wait,
            "before_sleep": before_sleep,
            "reraise": True,
        }


@dataclass(frozen=True)
class ClientSettings:
    """Everything a client needs, checked on construction.

    :param api_key: the VibeDream API key (sent as a bearer token to ``base_url`` only).
    :param base_url: scheme and host of the API, e.g. ``https://api.vibedream.ai``.
    :param timeout: seconds for each HTTP request (connect, read, write, pool).
    :param retry: the retry policy.
    :param allow_insecure_http: allow a plain ``http://`` base URL on a non-loopback host.
    :param sync_wait_seconds: the longest the API holds a sync-mode submit open; its read timeout is
        set above this, so the server's own answer (finished, or still processing) arrives first.
    :param max_response_bytes: the largest API answer read (base64 outputs make answers large; an
        endless or hostile body must not exhaust the worker's memory).
    """

    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    allow_insecure_http: bool = False
    sync_wait_seconds: float = 300.0
    max_response_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, str) or not self.api_key.strip():
            raise VibeDreamConfigError("api_key is empty: VibeDream needs an API key")
        base_url = (self.base_url or DEFAULT_BASE_URL).strip().rstrip("/")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise VibeDreamConfigError(
                f"base_url must be an http(s) URL with a host, e.g. {DEFAULT_BASE_URL}; got {self.base_url!r}"
            )
        if parts.scheme == "http" and not (_is_loopback(parts.hostname) or self.allow_insecure_http):
            # The API key travels in a header: on plain HTTP anyone on the path can read it.
            raise VibeDreamConfigError(
                f"base_url {base_url!r} is plain http on a non-loopback host, which would send the API key "
                "unencrypted; use https, or set allow_insecure_http in the connection extra"
            )
        if not isinstance(self.timeout, (int, float)) or isinstance(self.timeout, bool) or self.timeout <= 0:
            raise VibeDreamConfigError(f"timeout must be a number of seconds > 0; got {self.timeout!r}")
        if type(self.max_response_bytes) is not int or self.max_response_bytes <= 0:
            raise VibeDreamConfigError(
                f"max_response_bytes must be a whole number > 0; got {self.max_response_bytes!r}"
            )
        object.__setattr__(self, "base_url", base_url)


# --------------------------------------------------------------------------------------------------
# One API call: request building and answer parsing, shared by the sync and async clients
# --------------------------------------------------------------------------------------------------


def _shorten(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_retry_after(response: httpx.Response, body: Any) -> float | None:
    """Seconds to wait, from a ``Retry-After`` header (seconds or HTTP-date) or a ``retry_after``
    field of a JSON error body."""
    header = response.headers.get("retry-after")
    if header:
        header = header.strip()
        try:
            return max(0.0, float(header))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(header)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    if isinstance(body, Mapping):
        for key in ("retry_after", "retryAfter"):
            value = body.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return max(0.0, float(value))
    return None


def _api_error_text(body: Any, response: httpx.Response) -> str:
    """The API's own message from an error answer, whatever common shape it takes."""
    if isinstance(body, Mapping):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, Mapping) and isinstance(value.get("message"), str):
                return str(value["message"])
            if isinstance(value, list) and value:
                return _shorten(value)
    text = response.text.strip() if response.content else ""
    return _shorten(text) or response.reason_phrase or f"HTTP {response.status_code}"


def _error_for_status(response: httpx.Response, what: str) -> VibeDreamError:
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    status = response.status_code
    api_message = _api_error_text(body, response)
    message = f"VibeDream {what} failed: HTTP {status}: {api_message}"
    common: dict[str, Any] = {"status_code": status, "api_message": api_message}
    if status in (400, 422):
        field_name = body.get("field") if isinstance(body, Mapping) else None
        return VibeDreamValidationError(message, field=field_name, **common)
    if status in (401, 403):
        return VibeDreamAuthError(
            f"{message} (check the API key in the VibeDream connection's password field)", **common
        )
    if status == 404:
        return VibeDreamNotFoundError(message, **common)
    if status == 429:
        return VibeDreamRateLimitedError(message, retry_after=parse_retry_after(response, body), **common)
    if status == 408 or status >= 500:
        return VibeDreamServerError(message, retry_after=parse_retry_after(response, body), **common)
    return VibeDreamError(message, **common)


def _prediction_or_none(response: httpx.Response) -> Prediction | None:
    try:
        return Prediction.from_api(response.json())
    except (json.JSONDecodeError, UnicodeDecodeError, VibeDreamProtocolError):
        return None


class _CappedBody:
    """Collects a streamed answer and refuses to hold more than ``limit`` bytes."""

    def __init__(self, limit: int, call: _ApiCall) -> None:
        self.limit = limit
        self.call = call
        self.chunks: list[bytes] = []
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise VibeDreamProtocolError(
                f"VibeDream answer from {self.call.host} exceeds max_response_bytes ({self.limit}); "
                "refusing to read it"
            )
        self.chunks.append(chunk)

    def response(self, streamed: httpx.Response) -> httpx.Response:
        # The chunks are already decoded (the cap counts decompressed bytes): drop the encoding.
        headers = [(k, v) for k, v in streamed.headers.multi_items() if k.lower() != "content-encoding"]
        return httpx.Response(
            streamed.status_code, headers=headers, content=b"".join(self.chunks), request=streamed.request
        )


def _surely_not_sent(exc: httpx.TransportError) -> bool:
    """True when the request never left this machine, so a submit can be retried without a
    second job: connect errors and connect/pool timeouts happen before a byte is sent."""
    if not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return False
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        # httpx-aiohttp maps every aiohttp ClientConnectionError to ConnectTimeout, including
        # ServerDisconnectedError after the request was sent; only its connector errors are pre-send.
        return any(klass.__name__ == "ClientConnectorError" for klass in type(cause).__mro__)
    return True


@dataclass(frozen=True)
class _ApiCall:
    """One request and how to read its answer. ``submits`` marks a call that creates a billed job:
    it may only be retried when the job surely was not created."""

    description: str
    method: str
    url: str
    headers: httpx.Headers
    json_body: Mapping[str, Any] | None = None
    timeout: httpx.Timeout | None = None
    submits: bool = False

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or self.url

    @cached_property
    def request(self) -> httpx.Request:
        # Built only when httpx sends the call (or an error answer is mapped): the triggerer's poll
        # path goes straight to aiohttp and never needs it.
        extensions = {"timeout": self.timeout.as_dict()} if self.timeout is not None else {}
        return httpx.Request(
            self.method, self.url, headers=self.headers, json=self.json_body, extensions=extensions
        )

    def on_transport_error(self, exc: httpx.TransportError) -> VibeDreamError:
        request_sent = not _surely_not_sent(exc)
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.submits and request_sent:
            return self._state_unknown(reason)
        return VibeDreamTransportError(
            f"VibeDream {self.description} failed: no answer from {self.host} ({reason})",
            request_sent=request_sent,
        )

    def on_response(self, response: httpx.Response) -> Prediction:
        if self.submits and response.status_code == 504:
            # A gateway gave up waiting on a sync-mode submit. If it still relayed the prediction's
            # id, the job exists: hand it back (processing) so the caller polls that same id.
            relayed = _prediction_or_none(response)
            if relayed is not None:
                return relayed
        if response.is_success:
            return self.on_success(response.status_code, response.content)
        error = _error_for_status(response, self.description)
        # A 5xx after a submit was sent may still have created the job; a 408 says the server gave
        # up before reading the whole request, and a 429 that it refused it: both surely created none.
        if self.submits and isinstance(error, VibeDreamServerError) and response.status_code != 408:
            raise self._state_unknown(f"HTTP {response.status_code}: {error.api_message}")
        raise error

    def on_success(self, status_code: int, content: bytes) -> Prediction:
        try:
            return Prediction.from_api(json.loads(content))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            text = _shorten(content.decode(errors="replace"))
            raise VibeDreamProtocolError(
                f"VibeDream {self.description}: answer is not JSON: {text}",
                status_code=status_code,
            ) from exc

    def on_body(self, streamed: httpx.Response, body: _CappedBody) -> Prediction:
        """The answer, read: a success is parsed straight from its bytes (the hot path of every
        poll); anything else is rebuilt as a response for the error mapping."""
        if streamed.is_success:
            return self.on_success(streamed.status_code, b"".join(body.chunks))
        return self.on_response(body.response(streamed))

    def _state_unknown(self, reason: str) -> VibeDreamSubmissionStateUnknownError:
        return VibeDreamSubmissionStateUnknownError(
            f"VibeDream {self.description}: submission state unknown ({reason}). The request was sent, "
            "so the job may have been created and billed; it was NOT resubmitted automatically, to avoid "
            "paying twice. Check your VibeDream dashboard for a new prediction before retrying."
        )


class _Api:
    """Builds the calls of the VibeDream API for one set of settings."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        # The bearer token is put on each API request here rather than on the httpx client, so no
        # other request (output downloads, redirects) can ever carry it.
        # Built once: a triggerer polls thousands of times a minute, and httpx re-normalises a dict
        # of headers on every request.
        self.plain_headers = {
            "Authorization": f"Bearer {settings.api_key}",
            "Accept": "application/json",
            "User-Agent": f"airflow-provider-vibedream/{__version__}",
        }
        self._headers = httpx.Headers(self.plain_headers)

    def submit(self, model_id: str, payload: Mapping[str, Any]) -> _ApiCall:
        validate_model_id(model_id)
        timeout = None
        if payload.get("enable_sync_mode") is True:
            # The server holds a sync-mode request open while it works: read longer than it waits,
            # so its own answer (done, or still processing with an id) comes back, never a timeout
            # that would leave the submission state unknown.
            read = max(self.settings.timeout, self.settings.sync_wait_seconds + 30.0)
            timeout = httpx.Timeout(self.settings.timeout, read=read)
        return _ApiCall(
            f"submit to model {model_id!r}",
            "POST",
            self.settings.base_url + GENERATE_PATH.format(model_id=quote(model_id, safe="")),
            self._headers,
            json_body=dict(payload),
            timeout=timeout,
            submits=True,
        )

    def get_prediction(self, prediction_id: str) -> _ApiCall:
        if not isinstance(prediction_id, str) or not prediction_id or "/" in prediction_id:
            raise VibeDreamValidationError(
                f"prediction_id must be a prediction id; got {prediction_id!r}", field="prediction_id"
            )
        return _ApiCall(
            f"poll of prediction {prediction_id}",
            "GET",
            self.settings.base_url + PREDICTION_PATH.format(prediction_id=quote(prediction_id, safe="")),
            self._headers,
        )


def deadline_reached(prediction_id: str, deadline: float) -> VibeDreamTimeoutError:
    """The error (and trigger event message) for a prediction that outlived its deadline."""
    return VibeDreamTimeoutError(
        f"VibeDream prediction {prediction_id} did not finish before the deadline "
        f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(deadline))}); it may still be running: "
        "poll it again, or raise the operator's timeout",
        prediction_id=prediction_id,
    )


# --------------------------------------------------------------------------------------------------
# The clients
# --------------------------------------------------------------------------------------------------


class VibeDreamClient:
    """Blocking client, for workers and scripts.

    :param settings: key, base URL, timeout and retry policy.
    :param http: an ``httpx.Client`` to use instead of a new one (tests, custom transports).
    """

    def __init__(self, settings: ClientSettings, *, http: httpx.Client | None = None) -> None:
        self.settings = settings
        self._api = _Api(settings)
        self._http = http or httpx.Client(timeout=settings.timeout, follow_redirects=True)

    def _call(self, call: _ApiCall) -> Prediction:
        for attempt in tenacity.Retrying(**self.settings.retry.tenacity_kwargs(call.description)):
            with attempt:
                body = _CappedBody(self.settings.max_response_bytes, call)
                try:
                    streamed = self._http.send(call.request, stream=True)
                    try:
                        for chunk in streamed.iter_bytes():
                            body.feed(chunk)
                    finally:
                        streamed.close()
                except httpx.TransportError as exc:
                    raise call.on_transport_error(exc) from exc
                return call.on_body(streamed, body)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    def submit(self, model_id: str, payload: Mapping[str, Any]) -> Prediction:
        """Start a prediction of any model; returns the submit answer (usually ``processing``)."""
        return self._call(self._api.submit(model_id, payload))

    def upscale(self, request: UpscaleRequest) -> Prediction:
        """Start an upscale job."""
        return self.submit(UPSCALER_MODEL_ID, request.to_payload())

    def get_prediction(self, prediction_id: str) -> Prediction:
        """Poll a prediction once (transient errors retried per the policy)."""
        return self._call(self._api.get_prediction(prediction_id))

    def wait_for_prediction(
        self,
        prediction_id: str,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        deadline: float | None = None,
        on_status_change: Callable[[Prediction, float], None] | None = None,
    ) -> Prediction:
        """Poll until the prediction is terminal; raise :class:`VibeDreamTimeoutError` at ``deadline``
        (epoch seconds). Returns the terminal prediction, failed or not."""
        tracker = StatusTracker(on_status_change)
        while True:
            if deadline is not None and time.time() >= deadline:
                raise deadline_reached(prediction_id, deadline)
            prediction = self.get_prediction(prediction_id)
            tracker.observe(prediction)
            if prediction.is_terminal:
                return prediction
            time.sleep(next_sleep(poll_interval, deadline))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VibeDreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AiohttpSender:
    """Sends a poll straight through an aiohttp session: the triggerer's hot path.

    httpx over the aiohttp transport spends about as much CPU in its client and response wrapping as
    aiohttp spends on the whole request (~0.95 vs ~0.45 ms per poll with hundreds of triggers on one
    loop; ``make bench``). Answers are read exactly as the httpx path reads them: size-capped, errors
    mapped by the same :class:`_ApiCall`. A redirect is handed back (None) to the httpx client, which
    follows it and drops the key when it leaves the API's origin.
    """

    def __init__(self, session: aiohttp.ClientSession, settings: ClientSettings, api: _Api) -> None:
        import aiohttp
        from httpx_aiohttp.transport import map_aiohttp_exceptions

        # Same exception mapping as the transport, so both paths raise the same httpx errors (with
        # the aiohttp error as the cause, which _surely_not_sent reads). Bound once, not per poll.
        self._map_errors = map_aiohttp_exceptions
        self._session = session
        self._headers = api.plain_headers
        self._limit = settings.max_response_bytes
        # httpx's per-phase timeout, as httpx-aiohttp maps it: pool wait, TCP connect, each read.
        self._timeout = aiohttp.ClientTimeout(
            connect=settings.timeout, sock_connect=settings.timeout, sock_read=settings.timeout
        )

    async def send(self, call: _ApiCall) -> Prediction | None:
        body = _CappedBody(self._limit, call)
        try:
            with self._map_errors():
                async with self._session.request(
                    call.method, call.url, headers=self._headers, allow_redirects=False, timeout=self._timeout
                ) as answer:
                    if 300 <= answer.status < 400:
                        return None
                    async for chunk in answer.content.iter_chunked(64 * 1024):
                        body.feed(chunk)
                    status, headers = answer.status, answer.raw_headers
        except httpx.TransportError as exc:
            raise call.on_transport_error(exc) from exc
        content = b"".join(body.chunks)
        if 200 <= status < 300:
            return call.on_success(status, content)
        # Decompressed already: the encoding header would make httpx decode the body again.
        kept = [(key, value) for key, value in headers if key.lower() != b"content-encoding"]
        return call.on_response(httpx.Response(status, headers=kept, content=content, request=call.request))


class AsyncVibeDreamClient:
    """Non-blocking client, for triggers. Reuse one instance: it holds the connection pool.

    :param settings: key, base URL, timeout and retry policy.
    :param http: an ``httpx.AsyncClient`` to use instead of a new one.
    :param session: the ``aiohttp.ClientSession`` under ``http``'s transport, if it has one: polls
        then go straight through it (the hot path of a triggerer); everything else through ``http``.
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        http: httpx.AsyncClient | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.settings = settings
        self._api = _Api(settings)
        self._http = http or httpx.AsyncClient(timeout=settings.timeout, follow_redirects=True)
        self._fast = _AiohttpSender(session, settings, self._api) if session is not None else None

    @classmethod
    def over_aiohttp(cls, settings: ClientSettings) -> AsyncVibeDreamClient:
        """A client on one aiohttp connection pool: polls go straight through aiohttp, everything
        else through httpx with the aiohttp transport. Call it inside the event loop that uses it."""
        import aiohttp
        from httpx_aiohttp import AiohttpTransport

        # Sized and verified as httpx would: certifi roots, 100 connections, 5 s idle keep-alive.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=5.0, ssl=httpx.create_ssl_context())
        )
        # Redirects are followed by httpx, which drops the Authorization header when a redirect
        # leaves the API's origin, so the key never reaches another host.
        http = httpx.AsyncClient(
            transport=AiohttpTransport(client=session), timeout=settings.timeout, follow_redirects=True
        )
        return cls(settings, http=http, session=session)

    async def _call(self, call: _ApiCall, *, fast: bool = False) -> Prediction:
        policy = self.settings.retry
        # Nearly every call succeeds at once: make the first attempt before building the retry
        # machinery, which costs a quarter of a poll's CPU at triggerer scale (`make bench`).
        try:
            return await self._attempt(call, fast)
        except VibeDreamError as exc:
            if policy.max_retries == 0 or not policy.is_retryable(exc):
                raise
            delay = policy.backoff(1, exc)
            policy.log_retry(call.description, exc, 1, delay)
        await asyncio.sleep(delay)
        async for attempt in tenacity.AsyncRetrying(**policy.tenacity_kwargs(call.description, 1)):
            with attempt:
                return await self._attempt(call, fast)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    async def _attempt(self, call: _ApiCall, fast: bool) -> Prediction:
        if fast and self._fast is not None:
            prediction = await self._fast.send(call)
            if prediction is not None:
                return prediction
        return await self._send(call)

    async def _send(self, call: _ApiCall) -> Prediction:
        body = _CappedBody(self.settings.max_response_bytes, call)
        try:
            streamed = await self._http.send(call.request, stream=True)
            try:
                async for chunk in streamed.aiter_bytes():
                    body.feed(chunk)
            finally:
                await streamed.aclose()
        except httpx.TransportError as exc:
            raise call.on_transport_error(exc) from exc
        return call.on_body(streamed, body)

    async def submit(self, model_id: str, payload: Mapping[str, Any]) -> Prediction:
        """Start a prediction of any model; returns the submit answer."""
        return await self._call(self._api.submit(model_id, payload))

    async def upscale(self, request: UpscaleRequest) -> Prediction:
        """Start an upscale job."""
        return await self.submit(UPSCALER_MODEL_ID, request.to_payload())

    async def get_prediction(self, prediction_id: str) -> Prediction:
        """Poll a prediction once (transient errors retried per the policy)."""
        return await self._call(self._api.get_prediction(prediction_id), fast=True)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncVibeDreamClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# --------------------------------------------------------------------------------------------------
# Polling helpers shared by the worker loop above and the trigger
# --------------------------------------------------------------------------------------------------


def next_sleep(poll_interval: float, deadline: float | None) -> float:
    """Sleep the poll interval, but wake at the deadline rather than overshoot it."""
    if deadline is None:
        return poll_interval
    return max(0.0, min(poll_interval, deadline - time.time()))


@dataclass(frozen=True)
class PollSchedule:
    """How often to poll a prediction of a given age.

    The API recommends every 1-2 s. A job that has already run a while is watched less closely:
    the interval grows to ``age_fraction`` of the job's age, up to ``max_interval``. So a short job
    is seen finishing within ~``interval``, and a thousand long ones do not flood the API.

    :param interval: the interval for young predictions, seconds.
    :param max_interval: the longest interval, seconds.
    :param age_fraction: the interval as a fraction of the prediction's age, once that is longer.
    """

    interval: float = DEFAULT_POLL_INTERVAL
    max_interval: float = 10.0
    age_fraction: float = 0.03

    def next_interval(self, age: float) -> float:
        return min(max(self.interval, self.max_interval), max(self.interval, age * self.age_fraction))


def elapsed_since(created_at: str | None, fallback_start: float) -> float:
    """Seconds since the prediction was created (by the API's clock, so a restarted trigger still
    reports the true age), or since ``fallback_start`` (monotonic) when the API gave no time."""
    if created_at:
        try:
            created = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
            return max(0.0, time.time() - created.timestamp())
        except ValueError:
            pass
    return time.monotonic() - fallback_start


class StatusTracker:
    """Calls ``on_change(prediction, elapsed_seconds)`` when the status differs from the last one seen."""

    def __init__(self, on_change: Callable[[Prediction, float], None] | None) -> None:
        self._on_change = on_change
        self._started = time.monotonic()
        self._last_status: str | None = None

    def observe(self, prediction: Prediction) -> bool:
        changed = prediction.status != self._last_status
        self._last_status = prediction.status
        if changed and self._on_change is not None:
            self._on_change(prediction, elapsed_since(prediction.created_at, self._started))
        return changed


__all__ = [
    "AsyncVibeDreamClient",
    "ClientSettings",
    "Prediction",
    "RetryPolicy",
    "UpscaleRequest",
    "VibeDreamAuthError",
    "VibeDreamClient",
    "VibeDreamConfigError",
    "VibeDreamError",
    "VibeDreamNotFoundError",
    "VibeDreamPredictionFailedError",
    "VibeDreamProtocolError",
    "VibeDreamRateLimitedError",
    "VibeDreamServerError",
    "VibeDreamSubmissionStateUnknownError",
    "VibeDreamTimeoutError",
    "VibeDreamTransportError",
    "VibeDreamValidationError",
]
