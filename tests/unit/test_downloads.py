"""downloads.py: which destinations are public, and that a download connects to the very address its
check resolved (DNS rebinding), with the original Host header, TLS SNI and certificate name.

Names resolve through a fake resolver (``socket.getaddrinfo`` patched); servers are real, on loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from airflow_vibedream.errors import OutputStorageError
from airflow_vibedream.files.downloads import (
    DownloadPolicy,
    check_destination,
    download_chunks,
    is_data_output,
    is_non_public_host,
    is_public_address,
)

#: A globally routable address no test ever reaches (connections to it are faked or mocked).
PUBLIC = "93.184.216.34"
OTHER_PUBLIC = "93.184.216.35"
_REAL_GETADDRINFO = socket.getaddrinfo


class FakeDns:
    """Answers for some names, in rounds: each lookup of a name takes its next round (the last one
    repeats). Other names and address literals go to the real resolver."""

    def __init__(self) -> None:
        self.rounds: dict[str, list[list[str]]] = {}
        self.lookups: list[str] = []

    def answer(self, host: str, *rounds: list[str]) -> None:
        self.rounds[host] = list(rounds)

    def getaddrinfo(
        self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        if host not in self.rounds:
            return _REAL_GETADDRINFO(host, port, family, type, proto, flags)
        self.lookups.append(host)
        rounds = self.rounds[host]
        addresses = rounds.pop(0) if len(rounds) > 1 else rounds[0]
        number = int(port or 0)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, number, 0, 0))
            if ":" in address
            else (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, number))
            for address in addresses
        ]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    fake = FakeDns()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


class Server:
    """A loopback HTTP(S) server that records each request's path, Host header and the TLS SNI."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.sni: list[str | None] = []
        self.redirects: dict[str, str] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Host")))
                location = server.redirects.get(self.path)
                body = b"" if location else b"output bytes"
                self.send_response(302 if location else 200)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if context is not None:
            context.sni_callback = lambda _socket, name, _context: self.sni.append(name)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.close()


def certificate_for(name: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for the DNS name ``name`` only: no IP address in it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def download(url: str, http: httpx.Client, policy: DownloadPolicy | None = None) -> bytes:
    return b"".join(download_chunks(url, http, policy or DownloadPolicy()))


def recording_client(
    seen: list[httpx.Request], answer: Callable[[httpx.Request], httpx.Response] | None = None
) -> httpx.Client:
    """A client whose transport records each request (its URL names the address connected to)."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request) if answer else httpx.Response(200, content=b"output bytes")

    return httpx.Client(transport=httpx.MockTransport(handle), follow_redirects=False)


# Which addresses are public.


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "100.64.0.1",  # shared address space (CGNAT)
        "198.18.0.1",  # benchmarking
        "0.0.0.0",
        "192.0.2.1",  # documentation
        "224.0.0.1",  # multicast: is_global alone lets it through
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fec0::1",  # site-local (deprecated): is_global alone lets it through
        "ff0e::1",  # global-scope multicast
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:100.64.0.1",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:7f00:1::1",  # 6to4
        "2001::1",  # Teredo
        "::7f00:1",  # IPv4-compatible (deprecated)
    ],
)
def test_addresses_that_are_not_globally_routable_are_not_public(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))
    with pytest.raises(OutputStorageError, match="non-public address"):
        check_destination(
            f"http://{'[' + address + ']' if ':' in address else address}/o.png", DownloadPolicy()
        )


@pytest.mark.parametrize(
    "address", [PUBLIC, "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_globally_routable_addresses_are_public(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


def test_a_name_is_refused_when_any_of_its_addresses_is_not_public(dns: FakeDns) -> None:
    dns.answer("mixed.test", [PUBLIC, "10.0.0.7"])
    with pytest.raises(
        OutputStorageError, match=r"mixed\.test resolves to the non-public address 10\.0\.0\.7"
    ):
        check_destination("https://mixed.test/o.png", DownloadPolicy())
    dns.answer("cgnat.test", ["100.64.0.1"])
    with pytest.raises(OutputStorageError, match=r"non-public address 100\.64\.0\.1"):
        check_destination("https://cgnat.test/o.png", DownloadPolicy())
    assert is_non_public_host("cgnat.test") and not is_non_public_host("nonexistent.invalid")


def test_schemes_are_case_insensitive() -> None:
    for url in ("HTTP://127.0.0.1/", "Http://127.0.0.1/o.png", "HTTPS://[::1]/o.png"):
        assert not is_data_output(url)
        with pytest.raises(OutputStorageError, match="non-public address"):
            check_destination(url, DownloadPolicy())
    assert is_data_output("iVBORw0KGgo=") and is_data_output("data:image/png;base64,iVBORw0KGgo=")
    for url in ("FTP://example.com/o.png", "file:///etc/passwd", "http:///o.png", "//example.com/o.png"):
        with pytest.raises(OutputStorageError, match="only http"):
            check_destination(url, DownloadPolicy(allow_private=True))


# The connection goes to the address that was checked.


def test_a_rebinding_name_never_reaches_the_address_it_rebinds_to(
    dns: FakeDns, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checked: a public address. Any later lookup: loopback, where the server counts requests.
    dns.answer("rebind.test", [PUBLIC], ["127.0.0.1"])
    connects: list[Any] = []
    real_create_connection = socket.create_connection

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        connects.append(address)
        if address[0] == PUBLIC:
            raise ConnectionRefusedError("the public address is not reached from a unit test")
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    with httpx.Client(follow_redirects=False) as http, pytest.raises(httpx.ConnectError):
        download(f"http://rebind.test:{server.port}/o.png", http)
    assert connects == [(PUBLIC, server.port)]
    assert dns.lookups == ["rebind.test"]  # resolved once: httpx connected to the address itself
    assert server.requests == []


def test_the_request_names_the_checked_address_and_keeps_host_and_sni(dns: FakeDns) -> None:
    dns.answer("assets.test", [PUBLIC], ["127.0.0.1"])
    seen: list[httpx.Request] = []
    with recording_client(seen) as http:
        assert download("https://assets.test:8443/a/o.png?sig=1", http) == b"output bytes"
    [request] = seen
    assert str(request.url) == f"https://{PUBLIC}:8443/a/o.png?sig=1"
    assert request.headers["host"] == "assets.test:8443"
    assert request.extensions["sni_hostname"] == "assets.test"
    assert request.headers["connection"] == "close"  # a pooled connection never serves another name
    assert dns.lookups == ["assets.test"]


def test_an_ipv6_address_is_put_in_brackets(dns: FakeDns) -> None:
    dns.answer("v6.test", ["2606:4700::1111"])
    seen: list[httpx.Request] = []
    with recording_client(seen) as http:
        download("http://v6.test:8080/o.png", http)
    [request] = seen
    assert str(request.url) == "http://[2606:4700::1111]:8080/o.png"
    assert request.url.host == "2606:4700::1111" and request.headers["host"] == "v6.test:8080"
    assert "sni_hostname" not in request.extensions  # plain http: no TLS


def test_an_unreachable_address_falls_back_to_the_next_checked_one(dns: FakeDns) -> None:
    dns.answer("two.test", ["2606:4700::1111", PUBLIC])
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "2606:4700::1111":
            raise httpx.ConnectError("network is unreachable", request=request)
        return httpx.Response(200, content=b"output bytes")

    with recording_client(seen, answer) as http:
        assert download("http://two.test/o.png", http) == b"output bytes"
    assert [request.url.host for request in seen] == ["2606:4700::1111", PUBLIC]
    assert dns.lookups == ["two.test"]


def test_redirects_are_checked_and_pinned_too(dns: FakeDns) -> None:
    dns.answer("first.test", [PUBLIC])
    dns.answer("second.test", [OTHER_PUBLIC], ["127.0.0.1"])
    dns.answer("inside.test", ["10.0.0.9"])
    seen: list[httpx.Request] = []
    hops = {"/o.png": "/moved.png", "/moved.png": "https://second.test/final.png"}

    def answer(request: httpx.Request) -> httpx.Response:
        location = hops.get(request.url.path)
        return httpx.Response(302, headers={"location": location}) if location else httpx.Response(200)

    with recording_client(seen, answer) as http:
        download("http://first.test/o.png", http)
    assert [(str(r.url), r.headers["host"]) for r in seen] == [
        (f"http://{PUBLIC}/o.png", "first.test"),
        (f"http://{PUBLIC}/moved.png", "first.test"),  # relative to the name, not to the address
        (f"https://{OTHER_PUBLIC}/final.png", "second.test"),
    ]
    assert seen[-1].extensions["sni_hostname"] == "second.test"
    assert dns.lookups == ["first.test", "first.test", "second.test"]  # once per hop

    seen.clear()
    hops["/o.png"] = "HTTP://inside.test/o.png"
    with recording_client(seen, answer) as http, pytest.raises(OutputStorageError, match=r"10\.0\.0\.9"):
        download("http://first.test/o.png", http)
    assert len(seen) == 1  # the private hop was never asked


def test_allowed_private_destinations_are_pinned_as_well(dns: FakeDns, server: Server) -> None:
    # Allowed private: still one lookup, and the connection goes to what it answered (a second
    # lookup would answer an address where nothing listens).
    dns.answer("in-cluster.test", ["127.0.0.1"], ["10.255.255.1"])
    with httpx.Client(follow_redirects=False) as http:
        assert download(
            f"http://in-cluster.test:{server.port}/o.png", http, DownloadPolicy(allow_private=True)
        )
    assert server.requests == [("/o.png", f"in-cluster.test:{server.port}")]
    assert dns.lookups == ["in-cluster.test"]


# https: SNI and certificate verification use the name, the connection the address.


def test_https_verifies_the_certificate_against_the_name_not_the_address(
    dns: FakeDns, tmp_path: Path
) -> None:
    cert_file, key_file = certificate_for("pinned.test", tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    tls = Server(context)
    try:
        dns.answer("pinned.test", ["127.0.0.1"])
        dns.answer("impostor.test", ["127.0.0.1"])
        trust = ssl.create_default_context(cafile=str(cert_file))
        anywhere = DownloadPolicy(allow_private=True)
        with httpx.Client(verify=trust, follow_redirects=False) as http:
            # The certificate names pinned.test only, so this works only if it is verified against it.
            assert download(f"https://pinned.test:{tls.port}/o.png", http, anywhere) == b"output bytes"
            # Same address, another name: a new connection, verified for that name, and refused.
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                download(f"https://impostor.test:{tls.port}/o.png", http, anywhere)
        assert tls.sni[0] == "pinned.test" and tls.sni[1:] in ([], ["impostor.test"])
        assert tls.requests == [("/o.png", f"pinned.test:{tls.port}")]
    finally:
        tls.close()
