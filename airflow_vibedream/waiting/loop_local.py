"""Everything one event loop keeps for the waits on it, in one owner.

A triggerer runs thousands of triggers on one loop, and they share per-loop objects: the async
clients and their connection lookups (:mod:`airflow_vibedream.hooks.shared`), the outage gate of
each API (:func:`airflow_vibedream.waiting.gate.loop_gate`) and the poll scheduler of each
connection (:func:`airflow_vibedream.waiting.scheduler.loop_scheduler`). They all live in the
loop's one :class:`LoopLocal`, made on first use and dropped when the loop shuts down (its clients
closed then: ``asyncio.run`` finalises the async generator registered on first client use), so a
finished loop is never kept alive and a new loop starts clean.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_vibedream.client.aio import AsyncVibeDreamClient
    from airflow_vibedream.client.settings import ClientSettings


@dataclass
class LoopLocal:
    """The per-loop objects of every wait on one event loop."""

    #: Connection id -> (fresh until, monotonic; the lookup, shared by concurrent callers).
    lookups: dict[str, tuple[float, asyncio.Future[ClientSettings]]] = field(default_factory=dict)
    #: One client (one connection pool) per set of settings.
    clients: dict[ClientSettings, AsyncVibeDreamClient] = field(default_factory=dict)
    #: The settings each connection id resolved to last.
    current: dict[str, ClientSettings] = field(default_factory=dict)
    #: The outage gate of each API (by base URL): typed where they are made (``waiting.gate``),
    #: which builds on this module, not the other way round.
    gates: dict[str, Any] = field(default_factory=dict)
    #: The poll scheduler of each connection id (made in ``waiting.scheduler``, typed there).
    schedulers: dict[str, Any] = field(default_factory=dict)
    #: Finalised by the loop's shutdown_asyncgens(): closes the clients, drops this owner.
    closer: AsyncGenerator[None, None] | None = None


#: Per loop, by id with a weak reference to the loop (a WeakKeyDictionary would create a weak
#: reference on every lookup, i.e. before every poll). An entry holds no strong reference to its loop.
_LOCALS: dict[int, tuple[weakref.ref[asyncio.AbstractEventLoop], LoopLocal]] = {}


def existing(loop: asyncio.AbstractEventLoop) -> LoopLocal | None:
    """The loop's owner if it has one (the hot path: no allocation)."""
    entry = _LOCALS.get(id(loop))
    return entry[1] if entry is not None and entry[0]() is loop else None


def loop_local() -> LoopLocal:
    """The running loop's owner, made on first use (owners of loops gone or closed are forgotten)."""
    loop = asyncio.get_running_loop()
    local = existing(loop)
    if local is None:
        for key, (ref, _) in list(_LOCALS.items()):
            other = ref()
            if other is None or other.is_closed():
                del _LOCALS[key]
        local = LoopLocal()
        _LOCALS[id(loop)] = (weakref.ref(loop), local)
    return local


async def closed_at_shutdown() -> LoopLocal:
    """The running loop's owner, registered to close its clients when the loop shuts down."""
    loop = asyncio.get_running_loop()
    local = loop_local()
    if local.closer is None:
        local.closer = _close_at_shutdown(loop, local)
        await local.closer.__anext__()  # started on this loop, so its shutdown finalises it
    return local


async def forget_and_close(loop: asyncio.AbstractEventLoop, local: LoopLocal) -> None:
    """Forget the loop's owner and close its clients (at the loop's shutdown, or when asked)."""
    if existing(loop) is local:
        del _LOCALS[id(loop)]
    clients = list(local.clients.values())
    local.clients.clear()
    for client in clients:
        await client.aclose()


async def _close_at_shutdown(loop: asyncio.AbstractEventLoop, local: LoopLocal) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await forget_and_close(loop, local)
