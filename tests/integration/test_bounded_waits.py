"""Every wait and write is bounded: output downloads by size, total time and redirects (against the
emulator's endless, dripping and redirecting output faults), and a sync-mode submit by the operator's
timeout. Nothing partial is left at the final path."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_vibedream.client import ClientSettings, UpscaleRequest, VibeDreamClient
from airflow_vibedream.emulator import EmulatorConfig, EmulatorServer
from airflow_vibedream.errors import OutputStorageError, VibeDreamSubmissionStateUnknownError
from airflow_vibedream.files.downloads import DownloadPolicy
from airflow_vibedream.files.storage import persist_outputs
from airflow_vibedream.waiting.blocking import wait_for_prediction
from tests.conftest import TEST_KEY

ANYWHERE = DownloadPolicy(allow_private=True, timeout=5.0, read_timeout=5.0)


def completed_output(emulator: EmulatorServer) -> str:
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=emulator.base_url))
    prediction = client.upscale(UpscaleRequest(f"{emulator.base_url}/samples/64x48.png", "2k", "png"))
    done = wait_for_prediction(client, prediction.id, poll_interval=0.1, deadline=time.time() + 30)
    assert done.outputs
    return done.outputs[0]


def output_fault(emulator: EmulatorServer, **rule: Any) -> None:
    emulator.state.faults.replace([{"route": "output", **rule}])


def store(url: str, tmp_path: Path, policy: DownloadPolicy) -> Any:
    return persist_outputs(
        [url],
        str(tmp_path),
        names={"prediction_id": "p"},
        name_template="{prediction_id}.{ext}",
        policy=policy,
    )


def nothing_left(tmp_path: Path) -> bool:
    return not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_an_endless_body_stops_at_max_output_bytes(emulator: EmulatorServer, tmp_path: Path) -> None:
    url = completed_output(emulator)
    output_fault(emulator, kind="endless")
    with pytest.raises(OutputStorageError, match=r"more than max_output_bytes \(1048576\)"):
        store(url, tmp_path, DownloadPolicy(allow_private=True, max_bytes=1024 * 1024))
    assert nothing_left(tmp_path)


def test_a_dripping_body_stops_at_the_download_deadline(emulator: EmulatorServer, tmp_path: Path) -> None:
    url = completed_output(emulator)
    output_fault(emulator, kind="drip", delay=0.05)
    with pytest.raises(OutputStorageError, match="not finished within download_timeout"):
        store(url, tmp_path, DownloadPolicy(allow_private=True, timeout=1.0, read_timeout=5.0))
    assert nothing_left(tmp_path)


def test_a_redirect_to_another_host_is_followed_and_checked(emulator: EmulatorServer, tmp_path: Path) -> None:
    url = completed_output(emulator)
    with EmulatorServer(EmulatorConfig(api_key=TEST_KEY)) as other:
        # The other host serves a sample card; the hop is followed (after its address is checked).
        output_fault(emulator, kind="redirect", location=f"{other.base_url}/samples/32x16.png", times=1)
        [stored] = store(url, tmp_path, ANYWHERE)
        assert (stored.width, stored.height) == (32, 16)
        counters = httpx.get(f"{other.base_url}/_emulator/stats").json()["counters"]
        assert counters["requests"] == 1 and counters.get("outputs_requests_with_authorization", 0) == 0


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://example.com/x.png"])
def test_a_redirect_to_another_scheme_is_refused(
    emulator: EmulatorServer, tmp_path: Path, location: str
) -> None:
    url = completed_output(emulator)
    output_fault(emulator, kind="redirect", location=location)
    with pytest.raises(OutputStorageError, match="only http"):
        store(url, tmp_path, ANYWHERE)
    assert nothing_left(tmp_path)


def test_a_redirect_loop_stops_after_five(emulator: EmulatorServer, tmp_path: Path) -> None:
    url = completed_output(emulator)
    output_fault(emulator, kind="redirect", location=url)
    with pytest.raises(OutputStorageError, match="more than 5 redirects"):
        store(url, tmp_path, ANYWHERE)
    rules = httpx.get(f"{emulator.base_url}/_emulator/faults").json()["rules"]
    assert rules[0]["fired"] == 6  # the first request and five redirects, no more


def test_a_private_destination_is_refused_unless_allowed(emulator: EmulatorServer, tmp_path: Path) -> None:
    url = completed_output(emulator)  # on 127.0.0.1
    with pytest.raises(OutputStorageError, match=r"non-public address 127\.0\.0\.1"):
        store(url, tmp_path, DownloadPolicy())
    assert store(url, tmp_path, ANYWHERE)[0].bytes > 0


def test_a_sync_mode_read_is_bounded_by_the_callers_deadline() -> None:
    # The server holds sync-mode submits for up to 60 s; the caller gives it 1 s.
    with EmulatorServer(
        EmulatorConfig(api_key=TEST_KEY, processing_seconds=30, sync_wait_seconds=60)
    ) as slow:
        client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=slow.base_url, timeout=1.0))
        request = UpscaleRequest(f"{slow.base_url}/samples/8x8.png", "2k", "png", enable_sync_mode=True)
        started = time.monotonic()
        with pytest.raises(VibeDreamSubmissionStateUnknownError, match="ReadTimeout"):
            client.submit("image-upscaler", request.to_payload(), wait_at_most=1.0)
        assert time.monotonic() - started < 30  # generous: the unbounded read would take 60 s


# -- polls: a whole-answer deadline, and a status answer's size -----------------------------------------


def poll_fault(emulator: EmulatorServer, **rule: Any) -> None:
    emulator.state.faults.replace([{"route": "poll", **rule}])


def submitted(emulator: EmulatorServer) -> str:
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=emulator.base_url))
    return client.upscale(UpscaleRequest(f"{emulator.base_url}/samples/64x48.png", "2k", "png")).id


def test_a_dripping_poll_ends_the_workers_wait_at_its_deadline(emulator: EmulatorServer) -> None:
    from airflow_vibedream.errors import VibeDreamTimeoutError

    pid = submitted(emulator)
    poll_fault(emulator, kind="drip", delay=0.2)  # each read short, the answer never whole
    # A per-read timeout far above the drip's pace: only the whole-answer budget can end a poll.
    client = VibeDreamClient(ClientSettings(api_key=TEST_KEY, base_url=emulator.base_url, timeout=60.0))
    started = time.monotonic()
    with pytest.raises(VibeDreamTimeoutError):
        wait_for_prediction(client, pid, poll_interval=0.1, deadline=time.time() + 2.0)
    assert time.monotonic() - started < 4.0  # the deadline, plus one read at most


async def test_a_dripping_poll_ends_the_triggers_wait_at_its_deadline(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_vibedream.triggers.vibedream import VibeDreamPredictionTrigger
    from tests.conftest import connection_json
    from tests.integration.emulated import fire

    monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(emulator.base_url, timeout=60))
    pid = submitted(emulator)
    poll_fault(emulator, kind="drip", delay=0.2)
    started = time.monotonic()
    event = await fire(VibeDreamPredictionTrigger(pid, poll_interval=0.1, end_time=time.time() + 2.0))
    assert event["status"] == "timeout"
    assert time.monotonic() - started < 4.0


@pytest.mark.parametrize("path", ["worker", "triggerer"])
def test_a_huge_poll_answer_is_refused_at_the_status_cap_without_growing_memory(
    emulator: EmulatorServer, path: str
) -> None:
    import subprocess
    import sys

    pid = submitted(emulator)
    poll_fault(emulator, kind="endless")  # a 200 that never ends: 64 GiB of zeros if read whole
    # A fresh process, so its peak RSS is this test's alone.
    script = f"""
import asyncio, resource, sys
from airflow_vibedream.client import AsyncVibeDreamClient, ClientSettings, VibeDreamClient
from airflow_vibedream.errors import VibeDreamProtocolError
settings = ClientSettings(api_key={TEST_KEY!r}, base_url={emulator.base_url!r})
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
async def triggerer():
    async with AsyncVibeDreamClient.over_aiohttp(settings) as client:
        for _ in range(3):
            try:
                await client.get_prediction({pid!r}, retry=False, status_only=True)
            except VibeDreamProtocolError as exc:
                assert "status answer cap" in str(exc), exc
            else:
                sys.exit("answered")
def worker():
    client = VibeDreamClient(settings)
    for _ in range(20):
        try:
            client.get_prediction({pid!r}, retry=False, status_only=True)
        except VibeDreamProtocolError as exc:
            assert "status answer cap" in str(exc), exc
        else:
            sys.exit("answered")
before = peak()
asyncio.run(triggerer()) if {path!r} == "triggerer" else worker()
print(peak() - before)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    grown_mib = int(done.stdout.strip().splitlines()[-1])
    assert grown_mib <= 8, f"peak RSS grew {grown_mib} MiB"
