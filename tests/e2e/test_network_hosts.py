"""Separate hosts on one machine (network namespaces): the emulator on one, the provider's client on
another. Everything crosses a routed address, output URLs included; the client's own loopback has no
emulator behind it. The building block of the distributed-Airflow suite."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from airflow_vibedream.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY
from tests.e2e.netns import HostNetwork, can_make_namespaces, routed_hosts

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def network() -> Iterator[HostNetwork]:
    possible, why = can_make_namespaces()
    if not possible:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the multi-host tests in network namespaces: {why}")
        pytest.skip(f"no network namespaces here ({why}); the multi-host tests need root")
    with routed_hosts("api", "worker") as hosts:
        yield hosts


CLIENT = textwrap.dedent(
    """
    import json, sys, time
    from airflow_vibedream.client import ClientSettings, UpscaleRequest, VibeDreamClient
    from airflow_vibedream.files.outputs import download_policy
    from airflow_vibedream.files.storage import persist_outputs
    from airflow_vibedream.waiting.blocking import wait_for_prediction

    base_url, key, image, out = sys.argv[1:5]
    settings = ClientSettings(api_key=key, base_url=base_url, allow_insecure_http=True, timeout=10)
    client = VibeDreamClient(settings)
    submitted = client.upscale(UpscaleRequest(image, "2k", "png"))
    done = wait_for_prediction(client, submitted.id, poll_interval=0.2, deadline=time.time() + 60)
    [stored] = persist_outputs(
        done.outputs, out, names={"prediction_id": done.id}, name_template="{prediction_id}.{ext}",
        policy=download_policy(settings),
    )
    result = {"id": done.id, "output": done.outputs[0], "sha256": stored.sha256, "width": stored.width}
    print(json.dumps(result))
    """
)


def test_a_client_on_one_host_upscales_through_an_emulator_on_another(
    network: HostNetwork, tmp_path: Path
) -> None:
    api, worker = network.hosts["api"], network.hosts["worker"]
    with EmulatorProcess(
        "--api-key", TEST_KEY, "--processing-seconds", "0.5", host=api.address, command_prefix=api.prefix
    ) as emulator:
        assert emulator.base_url.startswith(f"http://{api.address}:")
        script = tmp_path / "client.py"
        script.write_text(CLIENT)
        port = emulator.base_url.rsplit(":", 1)[1]
        # The worker's own loopback has no emulator: nothing may quietly rely on 127.0.0.1.
        refused = subprocess.run(
            worker.command(
                sys.executable, "-c", f"import httpx; httpx.get('http://127.0.0.1:{port}/_emulator/health')"
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0 and "ConnectError" in refused.stderr
        done = subprocess.run(
            worker.command(
                sys.executable,
                str(script),
                emulator.base_url,
                TEST_KEY,
                f"{emulator.base_url}/samples/200x100.png",
                str(tmp_path / "out"),
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["output"].startswith(f"http://{api.address}:")  # a routed address, not loopback
        assert result["width"] == 2048
        # Byte-identical to what the emulator serves (fetched from this machine over the bridge).
        served = httpx.get(result["output"], timeout=30).content
        assert hashlib.sha256(served).hexdigest() == result["sha256"]
