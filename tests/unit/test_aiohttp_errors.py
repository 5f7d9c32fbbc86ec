"""aiohttp's errors in httpx's terms (client/aiohttp_errors.py): the table, the undecodable body, and
what counts as "never sent" for a submit."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp
import httpx
import pytest
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError

from airflow_vibedream.client.aiohttp_errors import as_httpx_error, as_httpx_error_of, is_connector_error
from airflow_vibedream.client.calls import _surely_not_sent


def connector_error() -> aiohttp.ClientConnectorError:
    key = SimpleNamespace(ssl=False, host="127.0.0.1", port=1)  # what aiohttp's message reads
    return aiohttp.ClientConnectorError(key, OSError(111, "Connection refused"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (connector_error(), httpx.ConnectError),
        (aiohttp.ServerDisconnectedError(), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError(), httpx.ReadTimeout),
        (aiohttp.ServerTimeoutError(), httpx.TimeoutException),
        (aiohttp.ClientPayloadError("Response payload is not completed"), httpx.ReadError),
        (HttpProcessingError(message="bad status line"), httpx.RemoteProtocolError),
        (ValueError("odd"), httpx.RemoteProtocolError),
    ],
)
def test_each_aiohttp_error_has_its_httpx_error(error: Exception, expected: type[Exception]) -> None:
    assert type(as_httpx_error(error)) is expected


def test_a_body_that_is_not_its_encoding_is_an_undecodable_answer() -> None:
    payload = aiohttp.ClientPayloadError("400, message: Can not decode content-encoding: gzip")
    payload.__cause__ = ContentEncodingError("Can not decode content-encoding: gzip")
    assert isinstance(as_httpx_error(payload), httpx.DecodingError)


def test_only_a_connector_error_was_surely_never_sent() -> None:
    for cause, never_sent in ((connector_error(), True), (aiohttp.ServerDisconnectedError(), False)):
        mapped = as_httpx_error_of(cause)
        assert mapped.__cause__ is cause and is_connector_error(cause) is never_sent
        assert _surely_not_sent(mapped) is never_sent  # type: ignore[arg-type]


def test_an_httpx_error_is_its_own_mapping() -> None:
    error = httpx.ReadError("cut")
    assert as_httpx_error_of(error) is error
