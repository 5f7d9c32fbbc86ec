"""An API far away: the trigger benchmark's waits (one event loop, jobs of 5-30 s) against the
emulator answering every poll after 100 ms, as an API across the internet does, side by side with
the peer-style trigger (a new aiohttp session per poll, every second).

A fixed number of polls in flight caps the poll rate at ``polls / round trip`` (64 at 100 ms: 640
polls a second) while thousands of jobs polled every ~1.8 s need more; the adaptive poll window
(:mod:`airflow_vibedream.waiting.window`) is what this measures. ``VIBEDREAM_BENCH_FAR`` sets the
sizes (default 2,000 and 10,000); ``VIBEDREAM_BENCH_PREVIOUS=/path/to/checkout`` adds that
checkout's provider (e.g. the commit before a change) as a third row.

Goals (issue 21): detection p99 <= 2 s, and never behind the peer-style trigger.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import machine, write_result
from benchmarks.triggers import kinds, run_child, verdict

#: The row of the provider polling every 1 s where jobs finish, as the peer does.
AT_PEER_CADENCE = "provider, 1 s"
SIZES = tuple(int(n) for n in os.environ.get("VIBEDREAM_BENCH_FAR", "2000,10000").split(","))


def window(run: dict[str, Any]) -> str:
    if not run.get("poll_window_max"):
        return "fixed" if run["kind"] != "peer" else "one per wait"
    return f"{run['poll_window_p50']:.0f} / {run['poll_window_max']}"


def table(results: list[dict[str, Any]]) -> str:
    rows = []
    for count in sorted({r["triggers"] for r in results}):
        runs = {r["kind"]: r for r in results if r["triggers"] == count}
        for r in runs.values():
            rows.append(
                f"| {count} | {r['kind']} | {r['finished']}/{count} "
                f"| {r['detection_p50_s']:.2f} / {r['detection_p99_s']:.2f} s "
                f"| {r['polls_per_prediction'] / max(r['wall_seconds'], 1e-9) * r['finished']:.0f} "
                f"| {r['polls_per_prediction']:.1f} | {r['cpu_ms_per_prediction']:.2f} ms "
                f"| {window(r)} |"
            )
        peer = runs["peer"]
        for name in ("provider", AT_PEER_CADENCE):
            ours = runs.get(name)
            if ours is None:
                continue
            p99 = ours["detection_p99_s"]
            rows.append(
                f"| {count} | **goals** ({name}) | | p99 <= 2 s: {verdict(p99 <= 2)}; not behind the peer "
                f"({peer['detection_p99_s']:.2f} s): {verdict(p99 <= peer['detection_p99_s'])} | | | "
                f"{ours['cpu_ms_per_prediction'] / peer['cpu_ms_per_prediction']:.2f}x peer | |"
            )
    return "\n".join(
        [
            "### An API 100 ms away: concurrent waits in one event loop (jobs 5-30 s, every poll "
            "answered after 100 ms)",
            "",
            "| waits | trigger | finished | detection p50 / p99 | polls per second | polls per prediction "
            "| CPU per prediction | polls in flight (p50 / max) |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def main() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vibedream-bench-far-"))
    results = []
    for count in SIZES:
        results += [run_child(kind, count, "F", work) for kind in kinds()]
        # The provider again at the peer's cadence (1 s; the API suggests 1-2 s): the same interval
        # on both sides, so what differs is how each waits, not how often it is told to poll.
        os.environ["VIBEDREAM_BENCH_POLL_INTERVAL"] = "1.0"
        try:
            results.append(dict(run_child("provider", count, "F", work), kind=AT_PEER_CADENCE))
        finally:
            del os.environ["VIBEDREAM_BENCH_POLL_INTERVAL"]
    write_result("far_api", {"runs": results, "machine": machine()}, table(results))
    return {"runs": results}


if __name__ == "__main__":
    main()
