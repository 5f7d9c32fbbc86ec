"""A cold burst: 2,000 waits handed to a fresh triggerer that has seen no job of their kind finish,
beside the same burst on a triggerer that has (a warm-up wave of 300 jobs of the same kind first).

The learned schedule learns from finished jobs only, so a cold triggerer first learns from the
shortest jobs of the burst (right-censoring: the long ones are still running). This measures what
that costs: detection delay and polls per job, cold against warm, jobs of 5-30 s on loopback.
``VIBEDREAM_BENCH_COLD`` sets the number of waits.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import machine, write_result
from benchmarks.triggers import run_child, verdict

WAITS = int(os.environ.get("VIBEDREAM_BENCH_COLD", "2000"))


def table(results: list[dict[str, Any]]) -> str:
    runs = {r["kind"]: r for r in results}
    rows = [
        f"| {r['kind']} | {r['finished']}/{r['triggers']} | {r['detection_p50_s']:.2f} / "
        f"{r['detection_p99_s']:.2f} s | {r['polls_per_prediction']:.1f} "
        f"| {r['cpu_ms_per_prediction']:.2f} ms |"
        for r in results
    ]
    cold, warm = runs["cold"], runs["warm"]
    polls = cold["polls_per_prediction"] / warm["polls_per_prediction"]
    return "\n".join(
        [
            f"### A cold burst: {WAITS:,} waits on a fresh triggerer (jobs 5-30 s, loopback)",
            "",
            "| triggerer | finished | detection p50 / p99 | polls per prediction | CPU per prediction |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"- cold detection p99 <= 2 s: {verdict(cold['detection_p99_s'] <= 2)}; "
            f"polls per prediction cold / warm: **{polls:.2f}x**",
        ]
    )


def main() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vibedream-bench-cold-"))
    results = []
    for kind, warm_up in (("warm", "300"), ("cold", "0")):
        saved = os.environ.get("VIBEDREAM_BENCH_WARM_UP")
        os.environ["VIBEDREAM_BENCH_WARM_UP"] = warm_up
        try:
            results.append(dict(run_child("provider", WAITS, "A", work), kind=kind))
        finally:
            if saved is None:
                del os.environ["VIBEDREAM_BENCH_WARM_UP"]
            else:
                os.environ["VIBEDREAM_BENCH_WARM_UP"] = saved
    write_result("cold_burst", {"runs": results, "machine": machine()}, table(results))
    return {"runs": results}


if __name__ == "__main__":
    main()
