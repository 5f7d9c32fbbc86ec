"""Async clients shared by every trigger on one event loop.

A triggerer runs thousands of triggers on one loop: one connection pool per connection serves them
all, and the connection is looked up once per ``SHARED_SETTINGS_TTL`` (not once per trigger). When a
lookup returns new settings (a rotated key, a new host), the client of the old settings is retired:
closed as soon as no trigger is using it.

The registry of a loop is dropped when the loop shuts down (``asyncio.run`` closes the clients
through an async generator it finalises), so it never keeps a finished loop alive and a script that
used the shared clients exits without "Unclosed client session" noise.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

from airflow_vibedream.client.aio import AsyncVibeDreamClient
from airflow_vibedream.client.settings import ClientSettings

#: Seconds a connection looked up for the shared clients is reused on its loop. A triggerer starting a
#: thousand of our triggers at once would otherwise look the same connection up a thousand times
#: (an API-server round trip each); a changed key is picked up within this time, or at once on a 401.
SHARED_SETTINGS_TTL = 30.0


@dataclass
class LoopShare:
    """The shared clients and connection lookups of one event loop."""

    lookups: dict[str, tuple[float, asyncio.Future[ClientSettings]]] = field(default_factory=dict)
    clients: dict[ClientSettings, AsyncVibeDreamClient] = field(default_factory=dict)
    #: The settings each connection id resolved to last.
    current: dict[str, ClientSettings] = field(default_factory=dict)
    #: Finalised by the loop's shutdown_asyncgens(): closes the clients, drops this share.
    closer: AsyncGenerator[None, None] | None = None


_SHARES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopShare] = weakref.WeakKeyDictionary()


async def _close_at_shutdown(loop: asyncio.AbstractEventLoop, share: LoopShare) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        _SHARES.pop(loop, None)
        clients = list(share.clients.values())
        share.clients.clear()
        for client in clients:
            await client.aclose()


async def loop_share() -> LoopShare:
    """The share of the running loop (created on first use; closed loops are forgotten)."""
    for stale in [loop for loop in list(_SHARES) if loop.is_closed()]:
        _SHARES.pop(stale, None)
    loop = asyncio.get_running_loop()
    share = _SHARES.get(loop)
    if share is None:
        share = _SHARES[loop] = LoopShare()
        share.closer = _close_at_shutdown(loop, share)
        await share.closer.__anext__()  # started on this loop, so its shutdown finalises it
    return share


async def shared_settings(
    share: LoopShare, conn_id: str, lookup: Callable[[], Awaitable[ClientSettings]], *, refresh: bool = False
) -> ClientSettings:
    """The connection's settings, looked up once per loop and TTL (or anew with ``refresh``);
    concurrent callers share the one lookup in flight. A failed lookup is not remembered."""
    now = time.monotonic()
    entry = share.lookups.get(conn_id)
    if refresh or entry is None or entry[0] <= now:
        entry = share.lookups[conn_id] = (now + SHARED_SETTINGS_TTL, asyncio.ensure_future(lookup()))
    try:
        # Shielded: one caller cancelled (its trigger was) must not cancel the lookup for the rest.
        return await asyncio.shield(entry[1])
    except Exception:
        if share.lookups.get(conn_id) is entry:
            del share.lookups[conn_id]
        raise


def shared_client(share: LoopShare, conn_id: str, settings: ClientSettings) -> AsyncVibeDreamClient:
    """The loop's client for ``settings``; the client of superseded settings is retired."""
    client = share.clients.get(settings)
    if client is None or client.closed:
        client = share.clients[settings] = AsyncVibeDreamClient.over_aiohttp(settings)
    previous = share.current.get(conn_id)
    share.current[conn_id] = settings
    if previous is not None and previous != settings and previous not in share.current.values():
        superseded = share.clients.pop(previous, None)
        if superseded is not None:
            superseded.retire()
    return client


async def aclose_shared_async_clients() -> None:
    """Close the shared async clients of the running loop now (tests; scripts need not: the loop's
    shutdown closes them)."""
    share = _SHARES.pop(asyncio.get_running_loop(), None)
    if share is None:
        return
    clients = list(share.clients.values())
    share.clients.clear()
    for client in clients:
        await client.aclose()
    if share.closer is not None:
        await share.closer.aclose()
