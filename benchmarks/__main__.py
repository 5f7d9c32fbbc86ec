"""Run every benchmark; each writes benchmarks/results/<name>.json and <name>.md."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks import (
    airflow_scale,
    cold_burst,
    dataset,
    docs,
    far_api,
    ledger,
    outage,
    persist,
    poll_cost,
    poll_path,
    triggers,
)

BENCHMARKS = {
    "persist": persist.main,
    "triggers": triggers.main,
    "far_api": far_api.main,
    "poll_cost": poll_cost.main,
    "poll_path": poll_path.main,
    "cold_burst": cold_burst.main,
    "outage": outage.main,
    "airflow_scale": airflow_scale.main,
    "ledger": ledger.main,
    "dataset": dataset.main,
}
#: Not a benchmark: rewrites docs/benchmarks.md's tables from the results (run after any of them).
TOOLS = {"docs": docs.main}


def main(argv: list[str]) -> int:
    selected = argv or list(BENCHMARKS)
    for name in selected:
        print(f"== {name} ==", flush=True)
        {**BENCHMARKS, **TOOLS}[name]()
    tables = [
        p.read_text()
        for p in sorted((Path(__file__).parent / "results").glob("*.md"))
        if p.name != "README.md"
    ]
    (Path(__file__).parent / "results" / "README.md").write_text(
        "# Benchmark results\n\n" + "\n".join(tables)
    )
    docs.main()  # docs/benchmarks.md shows the tables just written
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
