"""The emulator's routes over real HTTP: auth, validation, the prediction lifecycle, real resampling."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from airflow_vibedream.emulator import EmulatorServer
from tests.conftest import TEST_KEY, emulator_stats

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def submit(emulator: EmulatorServer, **overrides: object) -> httpx.Response:
    body = {
        "image": f"{emulator.base_url}/samples/320x200.png",
        "target_resolution": "2k",
        "output_format": "jpeg",
        **overrides,
    }
    return httpx.post(f"{emulator.base_url}/api/v1/models/image-upscaler/generate", json=body, headers=AUTH)


def wait_done(emulator: EmulatorServer, prediction_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = httpx.get(f"{emulator.base_url}/api/v1/predictions/{prediction_id}", headers=AUTH).json()
        if body["status"] != "processing":
            return body
        time.sleep(0.05)
    raise AssertionError("prediction never finished")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TEST_KEY}])
def test_requests_without_the_key_get_401_json(emulator: EmulatorServer, headers: dict[str, str]) -> None:
    response = httpx.post(
        f"{emulator.base_url}/api/v1/models/image-upscaler/generate", json={}, headers=headers
    )
    assert response.status_code == 401
    assert "API key" in response.json()["error"]
    assert emulator_stats(emulator.base_url).get("accepted_submissions", 0) == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"target_resolution": "3k"}, "target_resolution"),
        ({"output_format": "gif"}, "output_format"),
        ({"image": "not-a-url"}, "image"),
        ({"enable_sync_mode": "true"}, "enable_sync_mode"),
        ({"target_resolution": None}, "target_resolution"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_validation_names_the_field(
    emulator: EmulatorServer, overrides: dict[str, object], field: str
) -> None:
    response = submit(emulator, **overrides)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert field in response.json()["error"]


def test_unknown_model_and_prediction_are_404(emulator: EmulatorServer) -> None:
    assert (
        httpx.post(f"{emulator.base_url}/api/v1/models/nope/generate", json={}, headers=AUTH).status_code
        == 404
    )
    assert httpx.get(f"{emulator.base_url}/api/v1/predictions/nope", headers=AUTH).status_code == 404


def test_async_prediction_lifecycle_matches_the_documented_json(emulator: EmulatorServer) -> None:
    answer = submit(emulator).json()
    assert set(answer) == {"id", "status", "statusUrl", "estimatedTime", "costCents", "createdAt"}
    assert answer["status"] == "processing" and answer["costCents"] == 2
    assert answer["statusUrl"] == f"{emulator.base_url}/api/v1/predictions/{answer['id']}"
    done = wait_done(emulator, answer["id"])
    assert set(done) == {
        "id",
        "modelId",
        "modelName",
        "status",
        "outputs",
        "error",
        "createdAt",
        "completedAt",
    }
    assert done["status"] == "completed" and done["error"] is None
    outputs = done["outputs"]
    assert isinstance(outputs, list) and len(outputs) == 1
    image = Image.open(io.BytesIO(httpx.get(outputs[0]).content))
    assert (image.format, image.size) == ("JPEG", (2048, 1280))


@pytest.mark.parametrize(("resolution", "long_edge"), [("2k", 2048), ("4k", 3840), ("8k", 7680)])
def test_sync_mode_answers_with_the_resampled_image(
    emulator: EmulatorServer, resolution: str, long_edge: int
) -> None:
    # A portrait input: the long edge is the height, and the aspect ratio is kept.
    answer = submit(
        emulator,
        image=f"{emulator.base_url}/samples/200x400.png",
        target_resolution=resolution,
        enable_sync_mode=True,
    ).json()
    assert answer["status"] == "completed"
    image = Image.open(io.BytesIO(httpx.get(answer["outputs"][0]).content))
    assert image.size == (long_edge // 2, long_edge)


def test_base64_output_is_the_image(emulator: EmulatorServer) -> None:
    answer = submit(emulator, enable_sync_mode=True, enable_base64_output=True, output_format="webp").json()
    output = answer["outputs"][0]
    assert output.startswith("data:image/webp;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(output.split(",", 1)[1])))
    assert (image.format, max(image.size)) == ("WEBP", 2048)


def test_unreachable_input_fails_the_prediction_with_a_clear_error(emulator: EmulatorServer) -> None:
    answer = submit(emulator, image="http://127.0.0.1:9/missing.png").json()
    done = wait_done(emulator, answer["id"])
    assert done["status"] == "failed" and done["outputs"] is None
    assert "Failed to fetch the input image from http://127.0.0.1:9/missing.png" in str(done["error"])


def test_non_image_input_fails_the_prediction(emulator: EmulatorServer) -> None:
    answer = submit(emulator, image=f"{emulator.base_url}/_emulator/health").json()
    assert "could not be decoded" in str(wait_done(emulator, answer["id"])["error"])


def test_counters_and_outputs_without_auth(emulator: EmulatorServer) -> None:
    answer = submit(emulator, enable_sync_mode=True).json()
    httpx.get(answer["outputs"][0], headers=AUTH)
    stats = emulator_stats(emulator.base_url)
    assert stats["submissions"] == 1 and stats["accepted_submissions"] == 1
    assert stats["outputs_requests_with_authorization"] == 1


def test_cli_fault_flags_and_the_control_route(tmp_path: Path) -> None:
    from airflow_vibedream.emulator.process import EmulatorProcess

    rule = '{"route": "poll", "kind": "status", "status": 503, "retry_after": 2, "times": 1}'
    with EmulatorProcess(
        "--api-key", TEST_KEY, "--fault", rule, log_path=tmp_path / "emulator.log"
    ) as process:
        url = f"{process.base_url}/api/v1/predictions/any"
        first = httpx.get(url, headers=AUTH)
        assert first.status_code == 503
        assert first.headers["retry-after"] == "2" and first.json()["retry_after"] == 2
        assert httpx.get(url, headers=AUTH).status_code == 404  # the rule fired its one time
        bad = httpx.post(f"{process.base_url}/_emulator/faults", json={"rules": [{"kind": "explode"}]})
        assert bad.status_code == 400 and "kind must be one of" in bad.json()["error"]
        rules = [{"route": "poll", "kind": "drop"}]
        assert httpx.post(f"{process.base_url}/_emulator/faults", json={"rules": rules}).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(url, headers=AUTH)
    assert process.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)  # stopped, by its pid
