"""VibeDreamHook: connection fields to client settings, the key fallback, masking, test_connection."""

from __future__ import annotations

import pytest

from airflow_vibedream.errors import VibeDreamConfigError
from airflow_vibedream.hooks.vibedream import VibeDreamHook, base_url_from_connection
from tests.conftest import TEST_KEY, connection_json


def test_connection_fields_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT",
        connection_json("https://api.vibedream.test", timeout=12, max_retries=2),
    )
    settings = VibeDreamHook().get_settings()
    assert settings.base_url == "https://api.vibedream.test"
    assert settings.api_key == TEST_KEY
    assert settings.timeout == 12.0
    assert settings.retry.max_retries == 2


def test_api_key_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json("https://api.vibedream.test", api_key=None)
    )
    monkeypatch.setenv("VIBEDREAM_API_KEY", "from-env-key")
    assert VibeDreamHook().get_settings().api_key == "from-env-key"


def test_no_key_anywhere_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json("https://api.vibedream.test", api_key=None)
    )
    monkeypatch.delenv("VIBEDREAM_API_KEY", raising=False)
    with pytest.raises(VibeDreamConfigError, match=r"'API Key' \(password\) field .*VIBEDREAM_API_KEY"):
        VibeDreamHook().get_settings()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"timeout": "soon"}, "'timeout' must be a number"),
        ({"max_retries": 1.5}, "'max_retries' must be a whole"),
    ],
)
def test_bad_extra_is_named(monkeypatch: pytest.MonkeyPatch, extra: dict[str, object], words: str) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json("https://api.vibedream.test", **extra)
    )
    with pytest.raises(VibeDreamConfigError, match=words):
        VibeDreamHook().get_settings()


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        (None, None, "https://api.vibedream.ai"),
        ("api.vibedream.test", None, "https://api.vibedream.test"),
        ("http://127.0.0.1", 8080, "http://127.0.0.1:8080"),
        ("http://127.0.0.1:9000", 8080, "http://127.0.0.1:9000"),
    ],
)
def test_base_url_from_connection(host: str | None, port: int | None, expected: str) -> None:
    assert base_url_from_connection(host, port) == expected


def test_key_is_registered_with_the_secrets_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    # Airflow's public mask_secret is what this provider calls; that masking then hides the key in
    # every log is Airflow's (and is checked end to end: tests/e2e/test_crash_safety.py (d)).
    from unittest import mock

    monkeypatch.setenv(
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json("https://api.vibedream.test", api_key=None)
    )
    monkeypatch.setenv("VIBEDREAM_API_KEY", "env-only-key-91b2")
    with mock.patch("airflow_vibedream.hooks.vibedream.mask_secret") as masked:
        VibeDreamHook().get_settings()
    masked.assert_any_call("env-only-key-91b2")


async def test_triggers_on_one_loop_share_one_client_and_one_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from airflow_vibedream.hooks.shared import aclose_shared_async_clients

    monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json("https://api.vibedream.test"))
    lookups = 0
    real_lookup = VibeDreamHook.aget_settings

    async def counted(self: VibeDreamHook) -> object:
        nonlocal lookups
        lookups += 1
        return await real_lookup(self)

    monkeypatch.setattr(VibeDreamHook, "aget_settings", counted)
    clients = await asyncio.gather(*(VibeDreamHook().get_shared_async_client() for _ in range(200)))
    try:
        assert len({id(client) for client in clients}) == 1
        assert lookups == 1  # a burst of triggers costs one connection lookup, not 200
    finally:
        await aclose_shared_async_clients()


async def test_a_failed_shared_lookup_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_vibedream.hooks.shared import aclose_shared_async_clients

    monkeypatch.setenv(
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json("https://api.vibedream.test", api_key=None)
    )
    monkeypatch.delenv("VIBEDREAM_API_KEY", raising=False)
    with pytest.raises(VibeDreamConfigError):
        await VibeDreamHook().get_shared_async_client()
    monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json("https://api.vibedream.test"))
    try:
        client = await VibeDreamHook().get_shared_async_client()  # the fixed connection is read anew
        assert client.settings.api_key == TEST_KEY
    finally:
        await aclose_shared_async_clients()
