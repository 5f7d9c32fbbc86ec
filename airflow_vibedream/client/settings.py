"""How a client behaves: its settings (key, base URL, timeouts, caps) and its retry policy."""

from __future__ import annotations

import ipaddress
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import tenacity

from airflow_vibedream.constants import DEFAULT_BASE_URL
from airflow_vibedream.errors import (
    VibeDreamConfigError,
    VibeDreamError,
    VibeDreamRateLimitedError,
    VibeDreamServerError,
    VibeDreamTransportError,
)

log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: The default cap of one output: an 8K PNG of pure noise is ~100 MB; five times that, with room.
DEFAULT_MAX_OUTPUT_BYTES = 512 * 1024 * 1024
#: The default time one output's download may take in all, seconds.
DEFAULT_DOWNLOAD_TIMEOUT = 600.0


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

    def after_first_failure(self, description: str, exc: VibeDreamError) -> float:
        """The wait before the second attempt, logged; re-raises ``exc`` when it gets no retry.

        Both clients make their first attempt outside tenacity (nearly every call succeeds at once,
        and building the retry machinery costs a quarter of a poll's CPU at triggerer scale) and
        hand a failure here, then to tenacity with one attempt already counted.
        """
        if self.max_retries == 0 or not self.is_retryable(exc):
            raise exc
        delay = self.backoff(1, exc)
        self.log_retry(description, exc, 1, delay)
        return delay

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
    :param max_output_bytes: the largest output file downloaded (default: room for an 8K PNG, x5).
    :param download_timeout: seconds one output's download may take in all.
    :param allow_private_outputs: download outputs from loopback, private or link-local addresses
        even when the API itself is not on one.
    :param max_polls_in_flight: the most status polls a triggerer (one event loop) keeps in flight
        to this API at once; below it the number follows the API's answers and round-trip time.
    :param conn_id: the Airflow connection these settings came from, if any: an error that asks the
        user to change something (no answer from the API) names it.
    """

    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    allow_insecure_http: bool = False
    sync_wait_seconds: float = 300.0
    max_response_bytes: int = 256 * 1024 * 1024
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT
    allow_private_outputs: bool = False
    max_polls_in_flight: int = 512
    conn_id: str | None = None

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
        for name in ("timeout", "sync_wait_seconds", "download_timeout"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise VibeDreamConfigError(f"{name} must be a finite number of seconds > 0; got {value!r}")
        for name in ("max_response_bytes", "max_output_bytes", "max_polls_in_flight"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise VibeDreamConfigError(f"{name} must be a whole number > 0; got {value!r}")
        object.__setattr__(self, "base_url", base_url)
