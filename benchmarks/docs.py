"""``python -m benchmarks docs``: the tables of ``docs/benchmarks.md`` rewritten from
``benchmarks/results/<name>.md``, between ``<!-- results:<name> -->`` and ``<!-- /results -->``
markers, so a figure is written once (by the benchmark) and never pasted by hand."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(.*?)(<!-- /results -->)", re.DOTALL)


def rendered(text: str) -> str:
    """``text`` with every results block holding its results file's current table."""

    def block(match: re.Match[str]) -> str:
        table = (RESULTS / f"{match['name']}.md").read_text().rstrip() + "\n"
        return f"{match.group(1)}{table}{match.group(4)}"

    return BLOCK.sub(block, text)


def main() -> dict[str, Any]:
    text = DOCS.read_text()
    DOCS.write_text(rendered(text))
    return {"blocks": [m["name"] for m in BLOCK.finditer(text)]}


if __name__ == "__main__":
    print(main())
