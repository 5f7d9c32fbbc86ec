"""The triggerer's poll path (straight through aiohttp) over real HTTP: it must read every answer
exactly as the httpx path does. A small aiohttp server on loopback plays the odd answers the
emulator never gives (redirects, compressed errors, oversized bodies); the emulator plays the rest."""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from airflow_vibedream.client import AsyncVibeDreamClient, ClientSettings, RetryPolicy
from airflow_vibedream.emulator.server import EmulatorServer
from airflow_vibedream.errors import (
    VibeDreamAuthError,
    VibeDreamProtocolError,
    VibeDreamRateLimitedError,
    VibeDreamServerError,
)
from tests.conftest import TEST_KEY, emulator_stats

KEY = "fast-path-key"
PRED_ID = "550e8400-e29b-41d4-a716-446655440000"
COMPLETED = {
    "id": PRED_ID,
    "modelId": "image-upscaler",
    "status": "completed",
    "outputs": ["https://assets.example/out.png"],
    "error": None,
    "createdAt": "2025-01-15T12:00:00.000Z",
    "completedAt": "2025-01-15T12:00:30.000Z",
}


@dataclass
class Seen:
    """What the loopback servers received."""

    paths: list[str] = field(default_factory=list)
    other_host_authorization: list[str | None] = field(default_factory=list)


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]  # the port the site was given (0: any free one)
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def odd_api() -> AsyncIterator[tuple[str, Seen]]:
    """An API on one port and 'another origin' on a second port."""
    seen = Seen()

    async def elsewhere(request: web.Request) -> web.Response:
        seen.other_host_authorization.append(request.headers.get("Authorization"))
        return web.json_response({**COMPLETED, "id": request.match_info["pid"]})

    other_runner, other_url = await start(_app({"/api/v1/predictions/{pid}": elsewhere}))
    flaky_calls = {"n": 0}

    async def prediction(request: web.Request) -> web.StreamResponse:
        pid = request.match_info["pid"]
        seen.paths.append(pid)
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"message": "Invalid API key"}, status=401)
        if pid == "redirect":  # to another origin (an internal service): never followed
            raise web.HTTPTemporaryRedirect(f"{other_url}/api/v1/predictions/redirect")
        if pid == "moved" and "hop" not in request.query:  # on the API's own origin: followed
            raise web.HTTPTemporaryRedirect("/api/v1/predictions/moved?hop=1")
        if pid == "big":
            return web.json_response({**COMPLETED, "id": pid, "outputs": ["x" * 5000]})
        if pid == "gzip-429":
            body = gzip.compress(json.dumps({"message": "slow down, please"}).encode())
            return web.Response(
                body=body,
                status=429,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json", "Retry-After": "0"},
            )
        if pid == "flaky":
            flaky_calls["n"] += 1
            if flaky_calls["n"] <= 2:
                # The server asks for 0.3 s before the first retry: the first attempt is made
                # outside the retry machinery, and its Retry-After must still hold.
                retry_after = "0.3" if flaky_calls["n"] == 1 else "0"
                return web.json_response(
                    {"message": "busy"}, status=503, headers={"Retry-After": retry_after}
                )
            return web.json_response({**COMPLETED, "id": pid})
        if pid == "down":
            return web.json_response({"message": "down"}, status=503)
        return web.json_response({**COMPLETED, "id": pid})

    runner, url = await start(_app({"/api/v1/predictions/{pid}": prediction}))
    try:
        yield url, seen
    finally:
        await runner.cleanup()
        await other_runner.cleanup()


def _app(routes: dict[str, object]) -> web.Application:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)  # type: ignore[arg-type]
    return app


def settings(base_url: str, *, key: str = KEY, retries: int = 2, **kwargs: object) -> ClientSettings:
    retry = RetryPolicy(max_retries=retries, initial_backoff=0.01, max_backoff=0.05)
    return ClientSettings(api_key=key, base_url=base_url, retry=retry, **kwargs)  # type: ignore[arg-type]


async def test_plain_answer_goes_through_aiohttp(odd_api: tuple[str, Seen]) -> None:
    url, seen = odd_api
    async with AsyncVibeDreamClient.over_aiohttp(settings(url)) as client:
        prediction = await client.get_prediction(PRED_ID)
    assert prediction.succeeded and seen.paths == [PRED_ID]


async def test_a_redirect_on_the_api_origin_is_followed(odd_api: tuple[str, Seen]) -> None:
    url, seen = odd_api
    async with AsyncVibeDreamClient.over_aiohttp(settings(url)) as client:
        prediction = await client.get_prediction("moved")
    assert prediction.succeeded and prediction.id == "moved"
    # The fast path handed the redirect to httpx, which asked the API again (same origin).
    assert seen.paths == ["moved", "moved", "moved"]


async def test_a_redirect_off_the_api_origin_reaches_nothing(odd_api: tuple[str, Seen]) -> None:
    url, seen = odd_api
    async with AsyncVibeDreamClient.over_aiohttp(settings(url, retries=0)) as client:
        with pytest.raises(VibeDreamProtocolError, match="off the API's origin") as refused:
            await client.get_prediction("redirect")
    assert seen.other_host_authorization == []  # the other service got no request at all
    assert "never leaves" in str(refused.value)


async def test_oversized_answer_is_refused(odd_api: tuple[str, Seen]) -> None:
    url, _ = odd_api
    async with AsyncVibeDreamClient.over_aiohttp(settings(url, max_response_bytes=1000)) as client:
        with pytest.raises(VibeDreamProtocolError, match="max_response_bytes"):
            await client.get_prediction("big")


async def test_compressed_error_is_read_once(odd_api: tuple[str, Seen]) -> None:
    url, seen = odd_api
    async with AsyncVibeDreamClient.over_aiohttp(settings(url, retries=0)) as client:
        with pytest.raises(VibeDreamRateLimitedError, match="slow down, please"):
            await client.get_prediction("gzip-429")
    assert seen.paths == ["gzip-429"]


async def test_wrong_key_fails_at_once(odd_api: tuple[str, Seen]) -> None:
    url, seen = odd_api
    async with AsyncVibeDreamClient.over_aiohttp(settings(url, key="wrong")) as client:
        with pytest.raises(VibeDreamAuthError, match="Invalid API key"):
            await client.get_prediction(PRED_ID)
    assert seen.paths == [PRED_ID]


async def test_first_retry_waits_for_retry_after(odd_api: tuple[str, Seen]) -> None:
    url, seen = odd_api
    started = time.monotonic()
    async with AsyncVibeDreamClient.over_aiohttp(settings(url)) as client:
        prediction = await client.get_prediction("flaky")
    assert prediction.succeeded and seen.paths == ["flaky"] * 3
    assert time.monotonic() - started >= 0.3


async def test_retries_stop_after_the_budget(
    odd_api: tuple[str, Seen], caplog: pytest.LogCaptureFixture
) -> None:
    url, seen = odd_api
    with caplog.at_level(logging.WARNING, logger="airflow_vibedream.client"):
        async with AsyncVibeDreamClient.over_aiohttp(settings(url, retries=2)) as client:
            with pytest.raises(VibeDreamServerError):
                await client.get_prediction("down")
    assert seen.paths == ["down"] * 3
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert [m.split("; ")[1].split(" in ")[0] for m in retries] == ["retry 1 of 2", "retry 2 of 2"]


async def test_dropped_connections_are_retried_against_the_emulator(emulator: EmulatorServer) -> None:
    # Every second poll loses its connection mid-answer.
    rules = [{"route": "poll", "kind": "drop", "every": 2}]
    async with httpx.AsyncClient() as control:
        (
            await control.post(f"{emulator.base_url}/_emulator/faults", json={"rules": rules})
        ).raise_for_status()
    retry = RetryPolicy(max_retries=5, initial_backoff=0.01, max_backoff=0.05)
    client_settings = ClientSettings(api_key=TEST_KEY, base_url=emulator.base_url, retry=retry)
    async with AsyncVibeDreamClient.over_aiohttp(client_settings) as client:
        submitted = await client.submit(
            "image-upscaler",
            {
                "image": f"{emulator.base_url}/samples/8x8.png",
                "target_resolution": "2k",
                "output_format": "jpeg",
            },
        )
        for _ in range(6):
            assert (await client.get_prediction(submitted.id)).id == submitted.id
    (rule,) = emulator.state.faults.rules
    assert rule.fired >= 5  # 6 good answers needed at least 5 dropped ones in between
    # the submit, the emulator's own fetch of the input, the good polls and the dropped ones
    assert emulator_stats(emulator.base_url)["requests"] == 2 + 6 + rule.fired
