"""A deferral settles before its trigger's event is handed back.

Airflow 3.1-3.3 can fail a resumed task that did nothing wrong. The supervisor of a task that defers
notices its process's exit only at its next wake-up, up to ``[workers] min_heartbeat_interval``
(5 s) later (measured: "Workload finished" 5.0 s after "Pausing task as DEFERRED", every time); the
scheduler reads that "success" after that. If the trigger fired meanwhile and the resumed attempt is
already queued or running, the scheduler takes the stale "success" for a task killed externally and
fails (or retries) the attempt (apache/airflow#71580, #72716). Upscale jobs that finish, or fail for
good, within seconds of the deferral are exactly that case. So each trigger carries the earliest
time its event may fire: the cost is a few seconds, for those jobs only; a longer job is not
delayed at all."""

from __future__ import annotations

import asyncio
import time

#: Seconds added to the supervisor's wake-up interval: the scheduler's loop reads the event after.
SCHEDULER_MARGIN_SECONDS = 5.0


def settle_seconds() -> float:
    """``[vibedream] resume_settle_seconds``, else ``[workers] min_heartbeat_interval`` + margin."""
    from airflow.providers.common.compat.sdk import conf

    configured = conf.get("vibedream", "resume_settle_seconds", fallback="") or ""
    if configured.strip():
        return max(0.0, float(configured))
    return float(conf.getfloat("workers", "min_heartbeat_interval", fallback=5.0)) + SCHEDULER_MARGIN_SECONDS


def fire_not_before(now: float | None = None) -> float:
    """The earliest time (epoch seconds) the event of a trigger deferred now may fire."""
    return (time.time() if now is None else now) + settle_seconds()


async def settle(not_before: float | None) -> None:
    """Wait until ``not_before`` (epoch seconds), if it is still ahead."""
    if not_before is None:
        return
    remaining = not_before - time.time()
    if remaining > 0:
        await asyncio.sleep(remaining)
