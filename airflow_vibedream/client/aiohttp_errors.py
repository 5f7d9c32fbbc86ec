"""aiohttp's errors in httpx's terms, for the poll path that talks to aiohttp directly.

Our own table rather than httpx-aiohttp's (``map_aiohttp_exceptions`` is not part of its public
API), built from aiohttp's public exception classes and giving the same httpx classes, so that both
paths raise the same errors; the aiohttp error stays the cause, which ``calls._surely_not_sent``
reads to tell a connect error from a dropped connection."""

from __future__ import annotations

import aiohttp
import httpx
from aiohttp.http_exceptions import ContentEncodingError

#: Most specific first: the first class an error is an instance of decides.
_TABLE: tuple[tuple[type[BaseException], type[httpx.HTTPError]], ...] = (
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.TimeoutException),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.InvalidUrlClientError, httpx.UnsupportedProtocol),
    # As httpx-aiohttp says it: a connection error after the connector is still a "connect timeout".
    (aiohttp.ClientConnectionError, httpx.ConnectTimeout),
)


def is_undecodable_body(exc: BaseException) -> bool:
    """A body that is not the gzip/deflate/br its ``Content-Encoding`` claims (anywhere in the chain)."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; a cycle must not loop
        if seen is None:
            return False
        if isinstance(seen, ContentEncodingError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def as_httpx_error(exc: Exception) -> httpx.HTTPError:
    """The httpx error an aiohttp error stands for (an answer that cannot be read: DecodingError;
    anything not in the table: RemoteProtocolError, e.g. a malformed status line)."""
    if is_undecodable_body(exc):
        return httpx.DecodingError(str(exc))
    for aiohttp_class, httpx_class in _TABLE:
        if isinstance(exc, aiohttp_class):
            return httpx_class(str(exc))
    return httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}")


def as_httpx_error_of(exc: Exception) -> httpx.HTTPError:
    """The httpx error an aiohttp (or other transport) error stands for, with that error as its
    cause (``calls._surely_not_sent`` reads the cause to tell a connect error from a dropped one);
    an httpx error is returned as it is."""
    if isinstance(exc, httpx.HTTPError):
        return exc
    error = as_httpx_error(exc)
    error.__cause__ = exc
    return error


def is_connector_error(exc: BaseException | None) -> bool:
    """True when ``exc`` is aiohttp's error for a connection that was never made."""
    return isinstance(exc, aiohttp.ClientConnectorError)
