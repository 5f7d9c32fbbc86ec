"""VibeDreamHook: an Airflow connection turned into a VibeDream client (sync and async)."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import httpx
from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from airflow.providers.common.compat.sdk import BaseHook, mask_secret

from airflow_vibedream.client import AsyncVibeDreamClient, ClientSettings, RetryPolicy, VibeDreamClient
from airflow_vibedream.constants import API_KEY_ENV_VAR, DEFAULT_BASE_URL
from airflow_vibedream.errors import (
    VibeDreamAuthError,
    VibeDreamConfigError,
    VibeDreamError,
    VibeDreamNotFoundError,
)
from airflow_vibedream.hooks.shared import (
    cached_shared_client,
    loop_share,
    shared_client,
    shared_settings,
)


def _extra_number(extra: Mapping[str, Any], name: str, default: float, *, whole: bool = False) -> Any:
    value = extra.get(name, default)
    if value in (None, ""):
        return default
    try:
        number = int(value) if whole else float(value)
    except (TypeError, ValueError):
        raise VibeDreamConfigError(
            f"Connection extra {name!r} must be a {'whole number' if whole else 'number'}; got {value!r}"
        ) from None
    if not math.isfinite(number):
        raise VibeDreamConfigError(f"Connection extra {name!r} must be a finite number; got {value!r}")
    if whole and float(value) != number:
        raise VibeDreamConfigError(f"Connection extra {name!r} must be a whole number; got {value!r}")
    return number


def _extra_bool(extra: Mapping[str, Any], name: str) -> bool:
    value = extra.get(name, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", ""):
        return value.strip().lower() == "true"
    raise VibeDreamConfigError(f"Connection extra {name!r} must be true or false; got {value!r}")


def base_url_from_connection(host: str | None, port: int | None) -> str:
    """The connection's Host is the base URL with its scheme; a bare host name means https."""
    host = (host or "").strip()
    if not host:
        return DEFAULT_BASE_URL
    url = host if "://" in host else f"https://{host}"
    if port and not httpx.URL(url).port:
        url = f"{url.rstrip('/')}:{port}"
    return url


def settings_from_connection(
    conn_id: str,
    *,
    host: str | None,
    port: int | None,
    password: str | None,
    extra: Mapping[str, Any],
) -> ClientSettings:
    """Build client settings from a connection's fields, the same way for the sync and async paths.

    The API key is the connection's password or, when that is empty, ``$VIBEDREAM_API_KEY``. It is
    registered with Airflow's secrets masker at once, so no later log line can show it.
    """
    api_key = password or os.environ.get(API_KEY_ENV_VAR, "")
    if not api_key.strip():
        raise VibeDreamConfigError(
            f"No VibeDream API key: set the 'API Key' (password) field of connection {conn_id!r}, "
            f"or the {API_KEY_ENV_VAR} environment variable"
        )
    mask_secret(api_key)
    retry = RetryPolicy(
        max_retries=_extra_number(extra, "max_retries", RetryPolicy.max_retries, whole=True),
        initial_backoff=_extra_number(extra, "initial_backoff", RetryPolicy.initial_backoff),
        max_backoff=_extra_number(extra, "max_backoff", RetryPolicy.max_backoff),
    )
    return ClientSettings(
        api_key=api_key,
        base_url=base_url_from_connection(host, port),
        timeout=_extra_number(extra, "timeout", ClientSettings.timeout),
        retry=retry,
        allow_insecure_http=_extra_bool(extra, "allow_insecure_http"),
        sync_wait_seconds=_extra_number(extra, "sync_wait_seconds", ClientSettings.sync_wait_seconds),
        max_response_bytes=_extra_number(
            extra, "max_response_bytes", ClientSettings.max_response_bytes, whole=True
        ),
        max_output_bytes=_extra_number(
            extra, "max_output_bytes", ClientSettings.max_output_bytes, whole=True
        ),
        download_timeout=_extra_number(extra, "download_timeout", ClientSettings.download_timeout),
        allow_private_outputs=_extra_bool(extra, "allow_private_outputs"),
        max_polls_in_flight=_extra_number(
            extra, "max_polls_in_flight", ClientSettings.max_polls_in_flight, whole=True
        ),
        conn_id=conn_id,
    )


class VibeDreamHook(BaseHook):
    """Connects to the VibeDream API through an Airflow connection of type ``vibedream``.

    Connection fields: Password = API key (falls back to ``$VIBEDREAM_API_KEY``); Host = base URL
    with scheme (default ``https://api.vibedream.ai``); Extra (JSON, optional): ``timeout``
    (seconds per request, default 30), ``max_retries`` (default 5), ``initial_backoff``,
    ``max_backoff`` (seconds), ``allow_insecure_http`` (allow ``http://`` on a non-loopback host).

    :param vibedream_conn_id: the Airflow connection id.
    """

    conn_name_attr = "vibedream_conn_id"
    default_conn_name = "vibedream_default"
    conn_type = "vibedream"
    hook_name = "VibeDream"

    def __init__(self, vibedream_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vibedream_conn_id = vibedream_conn_id
        self._client: VibeDreamClient | None = None

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel the connection form: the password is the API key, the host the base URL."""
        return {
            "hidden_fields": ["schema", "login", "port"],
            "relabeling": {"host": "Base URL", "password": "API Key"},
            "placeholders": {
                "host": DEFAULT_BASE_URL,
                "password": f"your VibeDream API key (empty: ${API_KEY_ENV_VAR})",
                "extra": '{"timeout": 30, "max_retries": 5}',
            },
        }

    def get_settings(self) -> ClientSettings:
        """Client settings from the connection (blocking lookup: worker code only)."""
        conn = self.get_connection(self.vibedream_conn_id)
        return settings_from_connection(
            self.vibedream_conn_id,
            host=conn.host,
            port=conn.port,
            password=conn.password,
            extra=conn.extra_dejson,
        )

    async def aget_settings(self) -> ClientSettings:
        """Client settings from the connection, looked up without blocking the event loop."""
        conn = await get_async_connection(self.vibedream_conn_id, hook=self)
        extra = await get_async_extra_dejson(conn)
        return settings_from_connection(
            self.vibedream_conn_id, host=conn.host, port=conn.port, password=conn.password, extra=extra
        )

    def get_conn(self) -> VibeDreamClient:
        """The blocking client, built once per hook."""
        if self._client is None:
            self._client = VibeDreamClient(self.get_settings())
        return self._client

    def get_client(self) -> VibeDreamClient:
        """The blocking client (same as :meth:`get_conn`, under a name that says what it returns)."""
        return self.get_conn()

    def reread_client(self) -> VibeDreamClient | None:
        """After a refused key: read the connection again; a client of its new settings if they
        changed (it becomes this hook's client), else None."""
        settings = self.get_settings()
        current = self.get_conn()
        if settings == current.settings:
            return None
        self.log.warning(
            "VibeDream refused the API key; connection %s has new settings since: retrying",
            self.vibedream_conn_id,
        )
        self._client = VibeDreamClient(settings)
        return self._client

    async def get_async_client(self) -> AsyncVibeDreamClient:
        """A new async client of its own; use it as ``async with`` and reuse it for every poll."""
        return AsyncVibeDreamClient.over_aiohttp(await self.aget_settings())

    async def get_shared_async_client(self, *, refresh: bool = False) -> AsyncVibeDreamClient:
        """The async client shared by every caller on this event loop with the same settings.

        A triggerer runs thousands of triggers on one loop: one connection pool (keep-alive, one
        aiohttp session) serves them all, instead of one per trigger or per poll. Do not close it;
        the loop's shutdown does. Ask for it again before each use: a rotated key then takes effect.

        :param refresh: read the connection anew now (after a 401: the key may have been rotated).
        """
        if not refresh and (client := cached_shared_client(self.vibedream_conn_id)) is not None:
            return client
        share = await loop_share()
        settings = await shared_settings(share, self.vibedream_conn_id, self.aget_settings, refresh=refresh)
        return shared_client(share, self.vibedream_conn_id, settings)

    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated call: poll a prediction id that cannot exist.

        A 404 proves the host answers and accepted the key; a 401/403 means the key is wrong.
        """
        probe = str(uuid.UUID(int=0))
        try:
            # No retries: a connection test should answer now, not after a minute of backoff.
            settings = replace(self.get_settings(), retry=RetryPolicy(max_retries=0))
            with VibeDreamClient(settings) as client:
                client.get_prediction(probe)
        except VibeDreamNotFoundError:
            return True, "Connection to VibeDream works: the API accepted the key"
        except VibeDreamAuthError as exc:
            return False, f"VibeDream refused the API key (HTTP {exc.status_code}): {exc.api_message}"
        except VibeDreamError as exc:
            return False, str(exc)
        return True, "Connection to VibeDream works"
