"""Shared pieces of the benchmarks: a throwaway Airflow home for child processes, results files."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a measured child process: its own throwaway AIRFLOW_HOME."""
    home = tempfile.mkdtemp(prefix="vibedream-bench-airflow-")
    return {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False", **extra}


def process_cpu_seconds(pid: int) -> float:
    """CPU of one process itself (not its children), from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def max_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """This process's resident set size now, from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssGrowth:
    """Peak RSS growth over a block: RSS sampled in a thread, minus RSS at entry.
    (ru_maxrss alone cannot tell: an earlier peak, e.g. from imports, hides the block's own.)

    :param interval: seconds between samples; 5 ms catches a short-lived buffer's peak, but the
        sampler's own CPU then counts in a CPU measurement of the same process.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval

    def __enter__(self) -> RssGrowth:
        self.baseline = current_rss_mib()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mib())

    @property
    def growth_mib(self) -> float:
        return self.peak - self.baseline


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_result(name: str, data: dict[str, Any], table: str) -> None:
    """``results/<name>.json`` (all figures) and ``results/<name>.md`` (the table the README shows)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table.rstrip() + "\n")
    print(table)
