"""storage.py's decisions with no I/O: names, extensions, sources, and which outputs count as gone
(HTTP mocked with respx; the real downloads and uploads run in tests/integration/test_s3.py)."""

from __future__ import annotations

import base64

import httpx
import pytest
import respx

from airflow_vibedream.downloads import DownloadPolicy, first_gone_output
from airflow_vibedream.errors import OutputStorageError, VibeDreamValidationError
from airflow_vibedream.storage import (
    _decoded_chunks,
    is_data_output,
    output_extension,
    safe_segment,
    storage_uri,
    validate_image_source,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("manual__2026-01-01T00:00:00+00:00", "manual__2026-01-01T00_00_00_00_00"),
        ("../..", "_"),
        ("a/b", "a_b"),
        ("", "_"),
    ],
)
def test_safe_segment_keeps_names_inside_one_folder(value: str, expected: str) -> None:
    assert safe_segment(value) == expected and "/" not in safe_segment(value)


@pytest.mark.parametrize(
    ("output", "fmt", "ext"),
    [
        ("https://a/o.png", "jpeg", "jpg"),
        ("https://a/o.png", "webp", "webp"),
        ("https://a/o.png", None, "png"),
        ("https://a/o", None, "bin"),
        ("data:image/jpeg;base64,AAAA", None, "jpg"),
    ],
)
def test_output_extension(output: str, fmt: str | None, ext: str) -> None:
    assert output_extension(output, fmt) == ext


def test_sources_are_checked_and_named() -> None:
    assert validate_image_source("image", " https://a/b.png ") == "https://a/b.png"
    assert validate_image_source("image", "s3://bucket/key.png") == "s3://bucket/key.png"
    for bad in ("s3://bucket/", "s3://bucket", "ftp://a/b.png", "", None):
        with pytest.raises(VibeDreamValidationError) as info:
            validate_image_source("images[2]", bad)
        assert info.value.field == "images[2]"


def test_a_plain_path_is_a_local_uri() -> None:
    assert storage_uri("/tmp/out") == "file:///tmp/out"
    assert storage_uri("s3://b/p") == "s3://b/p"


def test_base64_outputs_decode_and_garbage_is_refused() -> None:
    data = b"\x89PNG fake"
    text = base64.b64encode(data).decode()
    assert is_data_output(text) and is_data_output(f"data:image/png;base64,{text}")
    assert b"".join(_decoded_chunks(f"data:image/png;base64,{text}")) == data
    with pytest.raises(OutputStorageError, match="neither a URL nor valid base64"):
        list(_decoded_chunks("not base64 at all!"))


@respx.mock
def test_first_gone_output_names_the_expired_link_and_reads_no_body() -> None:
    respx.get("https://assets.test/ok.png").mock(return_value=httpx.Response(200, content=b"x" * 10))
    respx.get("https://assets.test/gone.png").mock(return_value=httpx.Response(410))
    respx.get("https://assets.test/down.png").mock(side_effect=httpx.ConnectError("down"))
    anywhere = DownloadPolicy(allow_private=True)  # no DNS lookups in a unit test
    assert first_gone_output(
        ["https://assets.test/ok.png", "https://assets.test/gone.png"], policy=anywhere
    ) == (
        "https://assets.test/gone.png",
        410,
    )
    # A network error proves nothing (the download will say); base64 is inline and never gone.
    assert (
        first_gone_output(
            ["https://assets.test/down.png", "QUJD", "https://assets.test/ok.png"], policy=anywhere
        )
        is None
    )
    assert first_gone_output(None) is None


def test_only_http_urls_are_downloaded_and_private_ones_only_when_allowed() -> None:
    from airflow_vibedream.downloads import check_destination

    for url in ("ftp://example.com/a.png", "file:///etc/passwd", "gopher://x/"):
        with pytest.raises(OutputStorageError, match="only http"):
            check_destination(url, DownloadPolicy(allow_private=True))
    for url in (
        "http://127.0.0.1/a.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://10.1.2.3/",
    ):
        with pytest.raises(OutputStorageError, match="non-public address"):
            check_destination(url, DownloadPolicy())
        check_destination(url, DownloadPolicy(allow_private=True))  # allowed when the policy says so
