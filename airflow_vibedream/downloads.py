"""Bounded downloads of outputs: a total deadline, a size cap, at most five redirects, http(s) only,
and no loopback, private or link-local destination unless allowed; and whether outputs still exist."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from airflow_vibedream.client.models import shorten
from airflow_vibedream.errors import OutputStorageError


def is_data_output(output: str) -> bool:
    """Base64 outputs are not URLs; the API may send them bare or as ``data:`` URIs."""
    return not output.startswith(("http://", "https://"))


#: The default cap of one output: an 8K PNG of pure noise is ~100 MB; five times that, with room.
DEFAULT_MAX_OUTPUT_BYTES = 512 * 1024 * 1024
#: Redirects followed by one download, at most.
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class DownloadPolicy:
    """How far a download may go.

    :param max_bytes: the largest output stored (connection extra ``max_output_bytes``).
    :param timeout: seconds one output's download may take in all (extra ``download_timeout``).
    :param read_timeout: seconds any one read may wait.
    :param allow_private: allow loopback, private and link-local destinations (true when the API
        itself is on such an address, e.g. the emulator, or with extra ``allow_private_outputs``).
    """

    max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    timeout: float = 600.0
    read_timeout: float = 60.0
    allow_private: bool = False


def refused_address(host: str) -> str | None:
    """Why ``host`` is no public destination (it is, or resolves to, a loopback, private,
    link-local or otherwise reserved address), or None."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        return f"cannot be resolved ({exc})"
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if (
            address.is_loopback
            or address.is_private
            or address.is_link_local
            or address.is_reserved
            or address.is_multicast
            or address.is_unspecified
        ):
            return f"resolves to the non-public address {address}"
    return None


def is_non_public_host(host: str) -> bool:
    """True when ``host`` resolves, and to a loopback, private or link-local address."""
    reason = refused_address(host)
    return reason is not None and not reason.startswith("cannot be resolved")


def check_destination(url: str, policy: DownloadPolicy) -> None:
    """Refuse a download address that is not http(s), or not public when the policy says so."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutputStorageError(f"Refusing to download {shorten(url)}: only http(s) URLs are fetched")
    if not policy.allow_private:
        reason = refused_address(parts.hostname)
        if reason is not None:
            raise OutputStorageError(
                f"Refusing to download {shorten(url)}: {parts.hostname} {reason} (set "
                '"allow_private_outputs": true in the connection extra if outputs really live there)'
            )


def download_chunks(url: str, http: httpx.Client, policy: DownloadPolicy) -> Iterator[bytes]:
    """The bytes of ``url``: at most ``policy.max_bytes``, within ``policy.timeout`` seconds in
    all (an endless or dripping body ends in an error), through at most 5 checked redirects."""
    deadline = time.monotonic() + policy.timeout
    for _ in range(MAX_REDIRECTS + 1):
        check_destination(url, policy)
        remaining = max(0.001, deadline - time.monotonic())
        timeout = httpx.Timeout(min(policy.read_timeout, remaining))
        with http.stream("GET", url, follow_redirects=False, timeout=timeout) as response:
            if response.is_redirect:
                url = str(response.url.join(response.headers.get("location", "")))
                continue
            if response.status_code != 200:
                raise OutputStorageError(f"Downloading {shorten(url)} failed: HTTP {response.status_code}")
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > policy.max_bytes:
                    raise OutputStorageError(
                        f"Downloading {shorten(url)} stopped: more than max_output_bytes ({policy.max_bytes})"
                    )
                if time.monotonic() > deadline:
                    raise OutputStorageError(
                        f"Downloading {shorten(url)} stopped: not finished within download_timeout "
                        f"({policy.timeout:g}s; {size} bytes received)"
                    )
                yield chunk
            return
    raise OutputStorageError(f"Downloading {shorten(url)} failed: more than {MAX_REDIRECTS} redirects")


#: Answers that mean an output is gone for good (expired links, deleted objects).
GONE_STATUSES = frozenset({403, 404, 410})


def first_gone_output(
    outputs: list[str] | None, *, timeout: float = 30.0, policy: DownloadPolicy | None = None
) -> tuple[str, int] | None:
    """The first download URL among ``outputs`` that answers 403/404/410, with that status, or None.

    Only the answer's head is read (the body is not downloaded). Base64 outputs are inline: never gone.
    A network error proves nothing either way, so it counts as available (the download will say).
    """
    with httpx.Client(follow_redirects=False) as http:
        for output in outputs or []:
            if is_data_output(output):
                continue
            try:
                check_destination(output, policy or DownloadPolicy())
                with http.stream("GET", output) as response:
                    if response.status_code in GONE_STATUSES:
                        return output, response.status_code
            except (httpx.HTTPError, OutputStorageError):
                continue
    return None
