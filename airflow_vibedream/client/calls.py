"""One API call: how its request is built and how its answer (or transport error) is read.

Shared by the sync and async clients, so both map every answer to the same result or typed error.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from airflow_vibedream import __version__
from airflow_vibedream.client.models import Prediction, check_answer_is_for, shorten
from airflow_vibedream.client.request import validate_model_id, validate_prediction_id
from airflow_vibedream.client.settings import ClientSettings
from airflow_vibedream.constants import GENERATE_PATH, PREDICTION_PATH
from airflow_vibedream.errors import (
    VibeDreamAuthError,
    VibeDreamError,
    VibeDreamNotFoundError,
    VibeDreamProtocolError,
    VibeDreamRateLimitedError,
    VibeDreamServerError,
    VibeDreamSubmissionStateUnknownError,
    VibeDreamTimeoutError,
    VibeDreamTransportError,
    VibeDreamValidationError,
)


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
                return shorten(value)
    text = response.text.strip() if response.content else ""
    return shorten(text) or response.reason_phrase or f"HTTP {response.status_code}"


def _error_for_status(response: httpx.Response, what: str) -> VibeDreamError:
    try:
        body: Any = response.json()
    except (ValueError, RecursionError):  # not JSON, not text, or nested past any sense
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
    except (ValueError, RecursionError, VibeDreamProtocolError):
        return None


#: The largest status answer a wait reads (unless base64 outputs were asked, which come in the
#: answer itself). The documented answer is about 400 bytes; 64 KiB still holds dozens of long
#: presigned output URLs, and a triggerer's 512 polls in flight then hold 32 MiB at the very most,
#: where the general cap (``max_response_bytes``, 256 MiB) would let one hostile API fill the memory.
STATUS_ANSWER_BYTES = 64 * 1024


class CappedBody:
    """Collects a streamed answer and refuses to hold more than the call's cap.

    :param limit: the connection's ``max_response_bytes``.
    :param call: the call; a status poll's own cap is smaller (:data:`STATUS_ANSWER_BYTES`).
    """

    def __init__(self, limit: int, call: ApiCall) -> None:
        self.limit = min(limit, call.max_bytes) if call.max_bytes is not None else limit
        self.call = call
        self.chunks: list[bytes] = []
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            cap = "the status answer cap" if self.call.max_bytes == self.limit else "max_response_bytes"
            reason = f"answer from {self.call.host} exceeds {cap} ({self.limit} bytes)"
            if self.call.submits:  # the job may exist: its id is in the part not read
                raise self.call.state_unknown(reason)
            raise VibeDreamProtocolError(f"VibeDream {reason}; refusing to read it")
        self.chunks.append(chunk)

    def response(self, streamed: httpx.Response) -> httpx.Response:
        # The chunks are already decoded (the cap counts decompressed bytes): drop the encoding.
        headers = [(k, v) for k, v in streamed.headers.multi_items() if k.lower() != "content-encoding"]
        return httpx.Response(
            streamed.status_code, headers=headers, content=b"".join(self.chunks), request=streamed.request
        )


#: Redirects a poll follows on the API's own origin before it gives up (a loop is a protocol error).
MAX_API_REDIRECTS = 5


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _surely_not_sent(exc: httpx.TransportError) -> bool:
    """True when the request never left this machine, so a submit can be retried without a
    second job: connect errors and connect/pool timeouts happen before a byte is sent."""
    if not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return False
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        # aiohttp's connection errors all become ConnectTimeout (ServerDisconnectedError too, after
        # the request was sent); only its connector errors happened before a byte was sent.
        from airflow_vibedream.client.aiohttp_errors import is_connector_error

        return is_connector_error(cause)
    return True


@dataclass(frozen=True)
class ApiCall:
    """One request and how to read its answer. ``submits`` marks a call that creates a billed job:
    it may only be retried when the job surely was not created. ``answers_for`` (the polled
    prediction) and ``model_id`` (the model asked) are what an answer must be for: any other
    answer is a :class:`~airflow_vibedream.errors.VibeDreamAnswerMismatchError`, never a result.
    ``conn_id`` is the connection the call's settings came from: an error that asks the user to fix
    something names it."""

    description: str
    method: str
    url: str
    headers: httpx.Headers
    json_body: Mapping[str, Any] | None = None
    timeout: httpx.Timeout | None = None
    submits: bool = False
    answers_for: str | None = None
    model_id: str | None = None
    max_bytes: int | None = None
    budget: float | None = None
    conn_id: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or self.url

    @property
    def where(self) -> str:
        """The API's host with its port, the URL called and the connection it came from: what a user
        checks when nothing answers (the port is said even when the URL leaves it implicit)."""
        parts = urlsplit(self.url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # not a port at all: the URL says what it is
            return self.url
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
        connection = f", connection {self.conn_id!r}" if self.conn_id else ""
        return f"{host}:{port} ({self.url}{connection})"

    @cached_property
    def request(self) -> httpx.Request:
        # Built only when httpx sends the call (or an error answer is mapped): the triggerer's poll
        # path goes straight to aiohttp and never needs it.
        extensions = {"timeout": self.timeout.as_dict()} if self.timeout is not None else {}
        return httpx.Request(
            self.method, self.url, headers=self.headers, json=self.json_body, extensions=extensions
        )

    def on_http_error(self, exc: httpx.HTTPError) -> VibeDreamError:
        """Any httpx failure, as a typed error: no answer (transport), or an answer that cannot be
        read (a body that fails to decompress, a redirect loop)."""
        if isinstance(exc, httpx.TransportError):
            return self.on_transport_error(exc)
        reason = f"{type(exc).__name__}: {shorten(str(exc))}"
        if self.submits:
            return self.state_unknown(f"an unreadable answer ({reason})")
        return VibeDreamProtocolError(
            f"VibeDream {self.description}: unreadable answer from {self.host} ({reason})"
        )

    def on_transport_error(self, exc: httpx.TransportError) -> VibeDreamError:
        request_sent = not _surely_not_sent(exc)
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.submits and request_sent:
            return self.state_unknown(reason)
        # Nothing reached the API: most often it is not running where the connection points.
        hint = "" if request_sent else f"; {self.what_to_check()}"
        return VibeDreamTransportError(
            f"VibeDream {self.description} failed: no answer from {self.where} ({reason}){hint}",
            request_sent=request_sent,
        )

    def what_to_check(self) -> str:
        base = self.url.split("/api/", 1)[0]
        if self.conn_id:
            return f"is the API running at {base}? If not there, fix the Host of connection {self.conn_id!r}"
        return f"is the API running at {base}?"

    def redirect_of(self, response: httpx.Response) -> ApiCall | None:
        """The same call at the address a poll was redirected to, if it stays on the API's origin
        (scheme, host and port); None when ``response`` is no redirect to follow (an answer, or a
        submit's redirect, which :meth:`on_response` refuses). A redirect elsewhere is refused: a
        poll never reaches another service (an internal one, whose answer would land in the log),
        and only the API's origin ever gets the key."""
        if self.submits or not response.is_redirect:
            return None
        here = httpx.URL(self.url)
        location = response.headers.get("location", "")
        try:
            there = here.join(location)
        except httpx.InvalidURL:
            there = None
        if there is None or _origin(there) != _origin(here):
            raise VibeDreamProtocolError(
                f"VibeDream {self.description} was redirected (HTTP {response.status_code}) off the "
                f"API's origin to {shorten(location, 120)!r}; a poll never leaves "
                f"{here.scheme}://{here.netloc.decode()}",
                status_code=response.status_code,
            )
        return replace(self, url=str(there))

    def too_slow(self) -> VibeDreamTransportError:
        """A poll whose whole answer did not arrive within its budget (a slow drip keeps every
        single read short): transient, so the wait polls again until its own deadline."""
        return VibeDreamTransportError(
            f"VibeDream {self.description}: no complete answer from {self.host} within "
            f"{self.budget or 0:.1f}s (a slow or dripping answer)",
            request_sent=True,
        )

    def too_many_redirects(self) -> VibeDreamProtocolError:
        return VibeDreamProtocolError(
            f"VibeDream {self.description} was redirected more than {MAX_API_REDIRECTS} times"
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
        if self.submits and response.is_redirect:
            # A submit carries the image URLs (presigned ones too): it is never re-sent elsewhere.
            raise VibeDreamProtocolError(
                f"VibeDream {self.description} was answered with HTTP {response.status_code} to "
                f"{shorten(response.headers.get('location', '?'), 120)}; a submit is never re-sent to "
                "another address. Point the connection's Host at the API itself.",
                status_code=response.status_code,
            )
        error = _error_for_status(response, self.description)
        # A 5xx after a submit was sent may still have created the job; a 408 says the server gave
        # up before reading the whole request, and a 429 that it refused it: both surely created none.
        if self.submits and isinstance(error, VibeDreamServerError) and response.status_code != 408:
            raise self.state_unknown(f"HTTP {response.status_code}: {error.api_message}")
        raise error

    def on_success(self, status_code: int, content: bytes) -> Prediction:
        try:
            try:
                prediction = Prediction.from_api(json.loads(content))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
                text = shorten(content.decode(errors="replace"))
                raise VibeDreamProtocolError(
                    f"VibeDream {self.description}: answer is not JSON: {text}",
                    status_code=status_code,
                ) from exc
            return check_answer_is_for(prediction, self.answers_for, self.model_id)
        except VibeDreamProtocolError as exc:
            if self.submits:
                # A 2xx to a submit means the job was most likely created, but its id is unreadable:
                # sending the submit again would pay twice.
                raise self.state_unknown(f"HTTP {status_code} with an unreadable answer: {exc}") from exc
            raise

    def on_body(self, streamed: httpx.Response, body: CappedBody) -> Prediction:
        """The answer, read: a success is parsed straight from its bytes (the hot path of every
        poll); anything else is rebuilt as a response for the error mapping."""
        if streamed.is_success:
            return self.on_success(streamed.status_code, b"".join(body.chunks))
        return self.on_response(body.response(streamed))

    def state_unknown(self, reason: str) -> VibeDreamSubmissionStateUnknownError:
        return VibeDreamSubmissionStateUnknownError(
            f"VibeDream {self.description}: submission state unknown ({reason}). The request was sent, "
            "so the job may have been created and billed; it was NOT resubmitted automatically, to avoid "
            "paying twice. Check your VibeDream dashboard for a new prediction before retrying."
        )


class Api:
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

    def submit(
        self, model_id: str, payload: Mapping[str, Any], *, wait_at_most: float | None = None
    ) -> ApiCall:
        """:param wait_at_most: the caller's own bound (its deadline) on a sync-mode read."""
        validate_model_id(model_id)
        timeout = None
        if payload.get("enable_sync_mode") is True:
            # The server holds a sync-mode request open while it works: read longer than it waits,
            # so its own answer (done, or still processing with an id) comes back, never a timeout
            # that would leave the submission state unknown. But never past the caller's deadline.
            read = max(self.settings.timeout, self.settings.sync_wait_seconds + 30.0)
            if wait_at_most is not None:
                read = min(read, max(self.settings.timeout, wait_at_most))
            timeout = httpx.Timeout(self.settings.timeout, read=read)
        return ApiCall(
            f"submit to model {model_id!r}",
            "POST",
            self.settings.base_url + GENERATE_PATH.format(model_id=quote(model_id, safe="")),
            self._headers,
            json_body=dict(payload),
            timeout=timeout,
            submits=True,
            model_id=model_id,
            conn_id=self.settings.conn_id,
        )

    def get_prediction(
        self,
        prediction_id: str,
        model_id: str | None = None,
        *,
        status_only: bool = False,
        until: float | None = None,
    ) -> ApiCall:
        """A poll: its whole answer must arrive within the connection's timeout, and by ``until``.

        :param model_id: the model the prediction was asked of, if known (its answer must say it).
        :param status_only: read at most :data:`STATUS_ANSWER_BYTES` (a wait that asked no base64
            outputs); else up to ``max_response_bytes``.
        :param until: epoch seconds (the wait's deadline): no answer is read past it.
        """
        validate_prediction_id(prediction_id)
        budget = self.settings.timeout
        if until is not None:
            budget = max(0.05, min(budget, until - time.time()))
        return ApiCall(
            f"poll of prediction {prediction_id}",
            "GET",
            self.settings.base_url + PREDICTION_PATH.format(prediction_id=quote(prediction_id, safe="")),
            self._headers,
            timeout=httpx.Timeout(self.settings.timeout, read=budget),
            answers_for=prediction_id,
            model_id=model_id,
            max_bytes=STATUS_ANSWER_BYTES if status_only else None,
            budget=budget,
            conn_id=self.settings.conn_id,
        )


def deadline_reached(prediction_id: str, deadline: float) -> VibeDreamTimeoutError:
    """The error (and trigger event message) for a prediction that outlived its deadline."""
    return VibeDreamTimeoutError(
        f"VibeDream prediction {prediction_id} did not finish before the deadline "
        f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(deadline))}); it may still be running: "
        "poll it again, or raise the operator's timeout",
        prediction_id=prediction_id,
    )
