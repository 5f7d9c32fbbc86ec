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
from collections.abc import Awaitable, Callable

from airflow_vibedream.client.aio import AsyncVibeDreamClient
from airflow_vibedream.client.settings import ClientSettings
from airflow_vibedream.waiting.loop_local import LoopLocal, closed_at_shutdown, existing, forget_and_close

#: Seconds a connection looked up for the shared clients is reused on its loop. A triggerer starting a
#: thousand of our triggers at once would otherwise look the same connection up a thousand times
#: (an API-server round trip each); a changed key is picked up within this time, or at once on a 401.
SHARED_SETTINGS_TTL = 30.0


async def loop_share() -> LoopLocal:
    """The running loop's owner of the shared clients and lookups
    (:class:`~airflow_vibedream.waiting.loop_local.LoopLocal`; closed at the loop's shutdown)."""
    return await closed_at_shutdown()


def cached_shared_client(conn_id: str) -> AsyncVibeDreamClient | None:
    """The running loop's client for ``conn_id`` when its lookup is fresh and nothing changed, with
    no await at all (every trigger asks before every poll); else None."""
    share = existing(asyncio.get_running_loop())
    if share is None:
        return None
    entry = share.lookups.get(conn_id)
    settings = share.current.get(conn_id)
    if entry is None or settings is None or entry[0] <= time.monotonic() or not entry[1].done():
        return None
    if entry[1].exception() is not None or entry[1].result() is not settings:
        return None
    client = share.clients.get(settings)
    return client if client is not None and not client.closed else None


async def shared_settings(
    share: LoopLocal, conn_id: str, lookup: Callable[[], Awaitable[ClientSettings]], *, refresh: bool = False
) -> ClientSettings:
    """The connection's settings, looked up once per loop and TTL (or anew with ``refresh``);
    concurrent callers share the one lookup in flight. A failed lookup is not remembered."""
    now = time.monotonic()
    entry = share.lookups.get(conn_id)
    if not refresh and entry is not None and entry[0] > now and entry[1].done() and not entry[1].exception():
        return entry[1].result()  # the hot path: asked before every poll of every trigger
    if refresh or entry is None or entry[0] <= now:
        entry = share.lookups[conn_id] = (now + SHARED_SETTINGS_TTL, asyncio.ensure_future(lookup()))
    try:
        # Shielded: one caller cancelled (its trigger was) must not cancel the lookup for the rest.
        return await asyncio.shield(entry[1])
    except Exception:
        if share.lookups.get(conn_id) is entry:
            del share.lookups[conn_id]
        raise


def shared_client(share: LoopLocal, conn_id: str, settings: ClientSettings) -> AsyncVibeDreamClient:
    """The loop's client for ``settings``; the client of superseded settings is retired."""
    client = share.clients.get(settings)
    if client is not None and share.current.get(conn_id) is settings and not client.closed:
        return client  # the hot path: nothing changed since the last call
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
    loop = asyncio.get_running_loop()
    share = existing(loop)
    if share is None:
        return
    await forget_and_close(loop, share)
    if share.closer is not None:
        await share.closer.aclose()
