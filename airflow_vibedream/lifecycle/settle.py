"""A deferral settles before its trigger's event is handed back.

Airflow 3.1-3.3 can fail a resumed task that did nothing wrong: when a trigger fires within seconds
of the deferral, the scheduler may read the executor's "success" for the *deferring* process only
after the resumed attempt is running, take it for a task killed externally, and fail (or retry)
that attempt (apache/airflow#71580, #72716). Upscale jobs that finish, or fail for good, within a
few seconds of the deferral are exactly that case. So each trigger carries the earliest time its
event may fire, a few seconds after the deferral: the cost is those few seconds, for those jobs
only; a job that takes longer is not delayed at all."""

from __future__ import annotations

import asyncio
import time

#: Seconds from a deferral to the earliest event of its trigger.
RESUME_SETTLE_SECONDS = 5.0


def fire_not_before(now: float | None = None) -> float:
    """The earliest time (epoch seconds) the event of a trigger deferred now may fire."""
    return (time.time() if now is None else now) + RESUME_SETTLE_SECONDS


async def settle(not_before: float | None) -> None:
    """Wait until ``not_before`` (epoch seconds), if it is still ahead."""
    if not_before is None:
        return
    remaining = not_before - time.time()
    if remaining > 0:
        await asyncio.sleep(remaining)
