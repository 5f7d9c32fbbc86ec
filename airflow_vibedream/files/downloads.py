"""Bounded downloads of outputs: a total deadline, a size cap, at most five redirects, http(s) only,
and no destination that is not globally routable unless allowed; and whether outputs still exist.

A destination's host is resolved once, every address it resolves to is checked, and the connection
goes to a checked address itself: the URL's host is replaced by the address while the Host header
and, for https, TLS SNI and certificate verification keep the original name. Letting the HTTP client
resolve the name again when it connects would let DNS rebinding swap in another address after the
check."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias

import httpx

from airflow_vibedream.client.models import shorten
from airflow_vibedream.client.settings import DEFAULT_DOWNLOAD_TIMEOUT, DEFAULT_MAX_OUTPUT_BYTES
from airflow_vibedream.errors import OutputStorageError

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

#: URL schemes that are downloaded (compared case-insensitively, as URL schemes are).
HTTP_SCHEMES = ("http", "https")
_URL_PREFIXES = tuple(f"{scheme}://" for scheme in HTTP_SCHEMES)


def is_data_output(output: str) -> bool:
    """Base64 outputs are not URLs; the API may send them bare or as ``data:`` URIs.

    ``HTTP://`` is a URL too (schemes are case-insensitive), and never base64: ``:`` is not in the
    base64 alphabet."""
    return not output[:8].lower().startswith(_URL_PREFIXES)


#: Redirects followed by one download, at most.
MAX_REDIRECTS = 5
#: NAT64's well-known prefix (RFC 6052): the gateway connects to the IPv4 address in the last 32 bits,
#: so that address is the one to judge (DNS64 networks answer every IPv4-only name with one of these).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class DownloadPolicy:
    """How far a download may go.

    :param max_bytes: the largest output stored (connection extra ``max_output_bytes``).
    :param timeout: seconds one output's download may take in all (extra ``download_timeout``).
    :param read_timeout: seconds any one read may wait.
    :param allow_private: allow destinations that are not globally routable (loopback, private,
        link-local, shared CGNAT space and the like; true when the API itself is on such an address,
        e.g. the emulator, or with extra ``allow_private_outputs``). The connection still goes to the
        address the host resolved to when it was checked.
    """

    max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT
    read_timeout: float = 60.0
    allow_private: bool = False


@dataclass(frozen=True)
class Destination:
    """Where one request goes: its URL as given, and the addresses its host resolved to when it was
    checked (in the resolver's order of preference). Only these addresses are connected to.

    :param url: the URL, as httpx parsed it (the host checked is the host httpx would connect to).
    :param addresses: the host's addresses, each once, never empty.
    """

    url: httpx.URL
    addresses: tuple[IPAddress, ...]

    @property
    def host(self) -> str:
        """The host as it goes on the wire (IDNA-encoded; an IPv6 literal without brackets)."""
        return self.url.raw_host.decode("ascii")


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches in the end (IPv4-mapped, NAT64), or None."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_address(address: IPAddress) -> bool:
    """True when ``address`` is globally routable: not loopback, private, link-local, shared
    (100.64.0.0/10), benchmarking (198.18.0.0/15), documentation, unspecified, reserved or multicast.

    An IPv6 address that carries an IPv4 address (IPv4-mapped, NAT64) is judged by that IPv4 address;
    6to4 and Teredo addresses are refused outright (their relays reach IPv4 addresses we cannot see).

    :param address: the address to judge.
    """
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return is_public_address(embedded)
    if isinstance(address, ipaddress.IPv6Address) and (
        address.sixtofour is not None or address.teredo is not None or address.is_site_local
    ):
        return False
    # is_global alone lets multicast (224.0.0.0/4, ff0e::/16) and some reserved blocks through.
    return address.is_global and not (address.is_multicast or address.is_reserved)


def resolve(host: str) -> tuple[IPAddress, ...]:
    """The addresses ``host`` resolves to, each once, in the resolver's order of preference (an
    address literal is its own answer). An IPv4-mapped IPv6 address becomes the IPv4 address it maps:
    the same destination, reachable without IPv6.

    :param host: a DNS name or an address literal (IPv6 without brackets).
    :raises OSError: the host does not resolve to any IP address.
    """
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: dict[IPAddress, None] = {}
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]))
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        addresses.setdefault(mapped or address)
    if not addresses:
        raise socket.gaierror(f"no IP address for {host}")
    return tuple(addresses)


def _refusal(addresses: tuple[IPAddress, ...]) -> str | None:
    """Why these addresses are no public destination, or None when every one of them is public (one
    bad answer is enough: which address gets connected to must not matter)."""
    for address in addresses:
        if not is_public_address(address):
            return f"resolves to the non-public address {address}"
    return None


def refused_address(host: str) -> str | None:
    """Why ``host`` is no public destination (it is, or resolves to, an address that is not globally
    routable), or None.

    :param host: a DNS name or an address literal (IPv6 without brackets).
    """
    try:
        addresses = resolve(host)
    except OSError as exc:
        return f"cannot be resolved ({exc})"
    return _refusal(addresses)


def is_non_public_host(host: str) -> bool:
    """True when ``host`` resolves, and to an address that is not globally routable (loopback,
    private, link-local and the like).

    :param host: a DNS name or an address literal (IPv6 without brackets).
    """
    reason = refused_address(host)
    return reason is not None and not reason.startswith("cannot be resolved")


def _parse(url: str) -> httpx.URL:
    """``url`` as httpx reads it, if it is an http(s) URL with a host. The host checked must be the
    host httpx connects to: two URL parsers can disagree about the host of a crafted URL."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in HTTP_SCHEMES or not parsed.raw_host:
        raise OutputStorageError(f"Refusing to download {shorten(url)}: only http(s) URLs are fetched")
    return parsed


def check_destination(url: str, policy: DownloadPolicy) -> Destination:
    """Resolve the host of ``url`` once and check what it resolves to.

    :param url: the address of a download (or of one of its redirects).
    :param policy: whether destinations that are not globally routable are allowed.
    :returns: the destination, with the addresses a request to it may connect to.
    :raises OutputStorageError: the URL is not http(s), its host does not resolve, or (unless the policy
        allows it) any of its addresses is not globally routable.
    """
    parsed = _parse(url)
    destination_host = parsed.raw_host.decode("ascii")
    try:
        addresses = resolve(destination_host)
    except OSError as exc:
        raise OutputStorageError(
            f"Downloading {shorten(url)} failed: {destination_host} cannot be resolved ({exc})"
        ) from exc
    if not policy.allow_private:
        reason = _refusal(addresses)
        if reason is not None:
            raise OutputStorageError(
                f"Refusing to download {shorten(url)}: {destination_host} {reason} (set "
                '"allow_private_outputs": true in the connection extra if outputs really live there)'
            )
    return Destination(parsed, addresses)


def pinned_request(
    http: httpx.Client, destination: Destination, address: IPAddress, timeout: httpx.Timeout
) -> httpx.Request:
    """A GET of ``destination`` that connects to ``address`` and nowhere else.

    The URL names the address (httpx then resolves nothing); the Host header keeps the original
    host and port, and for https the ``sni_hostname`` request extension makes httpcore send the
    original name as SNI and verify the certificate against it. (Through an https proxy's CONNECT
    tunnel, e.g. ``HTTPS_PROXY`` in the environment, httpcore ignores ``sni_hostname`` and verifies
    against the address: such a download fails closed.)

    :param http: the client that sends the request.
    :param destination: the checked destination.
    :param address: one of ``destination.addresses``.
    :param timeout: the request's timeout.
    """
    url = destination.url
    headers = {"Host": url.netloc.decode("ascii")}
    extensions: dict[str, str] = {}
    if url.scheme == "https":
        extensions["sni_hostname"] = destination.host
        # httpcore pools connections by scheme, address and port, and a pooled connection keeps the
        # name its certificate was verified for: another name on the same address must not reuse it.
        # (An HTTP/1.1 header; the download clients do not speak HTTP/2.)
        headers["Connection"] = "close"
    return http.build_request(
        "GET",
        url.copy_with(host=str(address)),  # httpx puts an IPv6 address in brackets
        headers=headers,
        timeout=timeout,
        extensions=extensions,
    )


def _timeout_until(deadline: float, cap: float) -> httpx.Timeout:
    return httpx.Timeout(min(cap, max(0.001, deadline - time.monotonic())))


def _send(http: httpx.Client, destination: Destination, deadline: float, cap: float) -> httpx.Response:
    """The streamed answer from the first of the destination's checked addresses that takes the
    connection: an unreachable address (an IPv6 answer on an IPv4-only host) is not the end, as it
    is not for a client that connects to the name. Each attempt's timeout is at most ``cap`` and
    ends by ``deadline``."""
    *others, last = destination.addresses
    for address in others:
        request = pinned_request(http, destination, address, _timeout_until(deadline, cap))
        try:
            return http.send(request, stream=True, follow_redirects=False)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            continue  # the next checked address may be reachable; the last one's error is the answer
    request = pinned_request(http, destination, last, _timeout_until(deadline, cap))
    return http.send(request, stream=True, follow_redirects=False)


@contextlib.contextmanager
def _opened(
    http: httpx.Client, destination: Destination, deadline: float, cap: float
) -> Iterator[httpx.Response]:
    response = _send(http, destination, deadline, cap)
    try:
        yield response
    finally:
        response.close()


def download_chunks(url: str, http: httpx.Client, policy: DownloadPolicy) -> Iterator[bytes]:
    """The bytes of ``url``: at most ``policy.max_bytes``, within ``policy.timeout`` seconds in
    all (an endless or dripping body ends in an error), through at most 5 checked redirects. Every
    hop connects to an address its check resolved (see :func:`check_destination`).

    :param url: the output's http(s) URL.
    :param http: the client that sends the requests (no Authorization: outputs live on other hosts).
    :param policy: the bounds of the download.
    """
    deadline = time.monotonic() + policy.timeout
    for _ in range(MAX_REDIRECTS + 1):
        destination = check_destination(url, policy)
        with _opened(http, destination, deadline, policy.read_timeout) as response:
            if response.is_redirect:
                # Relative to the URL as given: the answer's own URL names the address, not the host.
                url = str(destination.url.join(response.headers.get("location", "")))
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

    Only the answer's head is read (the body is not downloaded), from an address the URL's check
    resolved, as for a download. Base64 outputs are inline: never gone. A network error proves nothing
    either way, so it counts as available (the download will say).

    :param outputs: a prediction's outputs (download URLs or base64 text).
    :param timeout: seconds one output's check may take.
    :param policy: which destinations may be asked (private ones only when it allows them).
    """
    with httpx.Client(follow_redirects=False) as http:
        for output in outputs or []:
            if is_data_output(output):
                continue
            try:
                destination = check_destination(output, policy or DownloadPolicy())
                with _opened(http, destination, time.monotonic() + timeout, timeout) as response:
                    if response.status_code in GONE_STATUSES:
                        return output, response.status_code
            except (httpx.HTTPError, OutputStorageError):
                continue
    return None
