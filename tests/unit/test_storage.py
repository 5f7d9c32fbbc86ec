"""storage.py's decisions with no I/O: names, extensions, sources, and which outputs count as gone
(HTTP mocked with respx; the real downloads and uploads run in tests/integration/test_s3.py)."""

from __future__ import annotations

import base64
import itertools
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from airflow_vibedream.errors import OutputStorageError, VibeDreamValidationError
from airflow_vibedream.files.downloads import DownloadPolicy, first_gone_output
from airflow_vibedream.files.inputs import validate_image_source
from airflow_vibedream.files.storage import (
    DEFAULT_OUTPUT_NAME,
    _decoded_chunks,
    is_data_output,
    output_extension,
    persist_outputs,
    safe_segment,
    storage_uri,
    validate_name_template,
)

#: A globally routable address no test reaches (requests to it are mocked).
PUBLIC = "93.184.216.34"


@pytest.mark.parametrize(
    ("value", "readable"),
    [
        # A changed value keeps its cleaned text, then "~" and a hash of the value itself.
        ("manual__2026-01-01T00:00:00+00:00", "manual__2026-01-01T00_00_00_00_00~"),
        ("../..", "id~"),
        ("a/b", "a_b~"),
        ("", "id~"),
        # A clean value is its own name.
        ("my_dag", "my_dag"),
    ],
)
def test_safe_segment_keeps_names_inside_one_folder(value: str, readable: str) -> None:
    name = safe_segment(value)
    assert name.startswith(readable) and "/" not in name and name.strip(".")
    assert name == readable or len(name) == len(readable) + 20  # 20 hex digits of SHA-256


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
def test_first_gone_output_names_the_expired_link_and_reads_no_body(monkeypatch: pytest.MonkeyPatch) -> None:
    # assets.test resolves to a public address; every later lookup would answer loopback (rebinding).
    lookups: list[str] = []

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        address = PUBLIC if lookups.count(host) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    respx.get(f"https://{PUBLIC}/ok.png").mock(return_value=httpx.Response(200, content=b"x" * 10))
    gone = respx.get(f"https://{PUBLIC}/gone.png").mock(return_value=httpx.Response(410))
    assert first_gone_output(["https://assets.test/ok.png", "https://gone.test/gone.png"]) == (
        "https://gone.test/gone.png",
        410,
    )
    # Asked at the address checked, under the original name (Host, TLS SNI), one lookup each.
    assert gone.calls.last.request.headers["host"] == "gone.test"
    assert gone.calls.last.request.extensions["sni_hostname"] == "gone.test"
    assert lookups == ["assets.test", "gone.test"]


@respx.mock
def test_first_gone_output_counts_a_network_error_or_inline_output_as_available() -> None:
    respx.get("https://127.0.0.1/down.png").mock(side_effect=httpx.ConnectError("down"))
    respx.get("https://127.0.0.1/ok.png").mock(return_value=httpx.Response(200))
    anywhere = DownloadPolicy(allow_private=True)
    outputs = ["https://127.0.0.1/down.png", "QUJD", "https://127.0.0.1/ok.png"]
    assert first_gone_output(outputs, policy=anywhere) is None
    assert first_gone_output(None) is None
    # Not allowed: never asked (a refused destination proves nothing either).
    assert first_gone_output(["HTTP://127.0.0.1/gone.png"]) is None


def test_only_http_urls_are_downloaded_and_private_ones_only_when_allowed() -> None:
    from airflow_vibedream.files.downloads import check_destination

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


def test_an_uppercase_scheme_is_a_url_and_a_private_one_is_refused(tmp_path: Path) -> None:
    # Not base64 ("neither a URL nor valid base64"), but a download that is checked and refused.
    assert output_extension("HTTP://a/o.png", None) == "png"
    with pytest.raises(OutputStorageError, match=r"non-public address 127\.0\.0\.1"):
        persist_outputs(
            ["HTTP://127.0.0.1/o.png"],
            str(tmp_path),
            names={"prediction_id": "p"},
            name_template="{prediction_id}.{ext}",
            policy=DownloadPolicy(),
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "template",
    [
        # Unmapped tasks render map_suffix "", and this one then is "../../x".
        ".{map_suffix}./.{map_suffix}./x",
        "..{map_suffix}/{prediction_id}.{ext}",
        "{dag_id}/.{map_suffix}./{prediction_id}",
        "{map_suffix}/x",  # mapped: "/map_0/x", absolute
        "../../x.{ext}",
        "a/./b",
        ".../{prediction_id}",
        "/etc/{prediction_id}.{ext}",
        "C:/{prediction_id}.{ext}",
        "s3://bucket/{prediction_id}",
        ".{dag_id:.0}./x",  # a spec can render a field empty
        "{dag_id:/>9}/x",  # or as separators
        "{dag_id:{index}}",
        "{dag_id!r}/{index}",
        "{index:.0}/{ext}",
        "{nope}.png",
        "{dag_id.__class__}.{ext}",
        "{}",
        "",
        "  ",
    ],
)
def test_name_templates_that_could_leave_output_path_are_refused(template: str) -> None:
    with pytest.raises(VibeDreamValidationError) as info:
        validate_name_template(template)
    assert info.value.field == "output_name_template"


@pytest.mark.parametrize(
    "template",
    [
        DEFAULT_OUTPUT_NAME,
        "{prediction_id}-{index:03d}.{ext}",
        "{dag_id}..{run_id}/{task_id}{map_suffix}/{prediction_id}.{ext}",
        ".{dag_id}./{task_id}{map_suffix}./{index:4}.{ext}",
        ".hidden/{prediction_id}.{ext}",
    ],
)
def test_name_templates_inside_output_path_are_kept(template: str) -> None:
    assert validate_name_template(template) == template


#: Pieces of templates, combined every way below; and field values safe_segment gets.
_PIECES = (".", "/", "x", "{map_suffix}", "{dag_id}", "{index}")
_HOSTILE_IDS = (".", "..", "...", "a/..", "..a..", "", "/")


def test_every_accepted_template_stays_inside_output_path_for_every_value() -> None:
    # The check is structural: whatever it accepts must render no dot-only segment and no absolute
    # name, for every map index and every id safe_segment can be given.
    accepted = 0
    for size in range(1, 6):
        for pieces in itertools.product(_PIECES, repeat=size):
            template = "".join(pieces)
            try:
                validate_name_template(template)
            except VibeDreamValidationError:
                continue
            accepted += 1
            for value, map_suffix in itertools.product(_HOSTILE_IDS, ("", "/map_0", "/map_12")):
                rendered = template.format(dag_id=safe_segment(value), map_suffix=map_suffix, index=3)
                segments = rendered.split("/")
                assert not rendered.startswith("/"), (template, rendered)
                assert all(not segment or segment.strip(".") for segment in segments), (template, rendered)
    assert accepted > 100  # the check is no blanket refusal
