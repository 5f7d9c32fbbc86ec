"""``make demo`` as a newcomer meets it: run twice from a fresh directory, it prints what the README
shows (the second run reuses the first image through the ledger, exit 0), and a failed run keeps
its log where it says.

The script is what ``make demo`` runs (``scripts/demo.py``), run from an empty directory with its
home and outputs there, as in a fresh clone: the real emulator, the real Airflow CLI, SQLite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_vibedream.jobs.ledger.documents import LEDGER_DIR

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, str(REPO / "scripts" / "demo.py"), "--output-dir", "demo-output", "--home", ".demo"]


def readme_line(prefix: str) -> re.Pattern[str]:
    """The README's line starting with ``prefix``, each ``<…>`` placeholder any text without a space
    or a slash, the rest exactly."""
    readme = (REPO / "README.md").read_text()
    [line] = {line for line in readme.splitlines() if line.startswith(prefix)}  # each block says it
    parts = re.split(r"(<[^>]+>)", line)
    return re.compile("".join(r"[^/ ]+" if p.startswith("<") else re.escape(p) for p in parts))


def demo(cwd: Path) -> subprocess.CompletedProcess[str]:
    # The environment of a newcomer's shell: none of the test session's Airflow settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VIBEDREAM"))}
    return subprocess.run(DEMO, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_make_demo_runs_twice_and_prints_what_the_readme_shows(tmp_path: Path) -> None:
    first = demo(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    lines = first.stdout.splitlines()
    [upscaled] = [line for line in lines if line.startswith("demo: upscaled image:")]
    assert readme_line("demo: upscaled image:").fullmatch(upscaled), upscaled
    assert readme_line("demo: OK").fullmatch(lines[-1]), lines[-1]

    second = demo(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    lines = second.stdout.splitlines()
    [reused] = [line for line in lines if line.startswith("demo: reused image:")]
    assert readme_line("demo: reused image:").fullmatch(reused), reused
    assert readme_line("demo: OK").fullmatch(lines[-1]), lines[-1]
    assert "demo: reusing the Airflow database in ./.demo" in second.stdout  # no second migration
    # The same image, paid once: one image file in all, named in both runs.
    path = upscaled.split()[3]
    assert reused.split()[3] == path
    images = [p for p in (tmp_path / "demo-output").rglob("*.png") if LEDGER_DIR not in p.parts]
    assert [f"./{p.relative_to(tmp_path)}" for p in images] == [path]
    # The log of the last run stays where the README says.
    assert "dags test" in (tmp_path / ".demo" / "demo.log").read_text()


def test_a_failed_demo_keeps_its_log_and_says_where(tmp_path: Path) -> None:
    (tmp_path / ".demo" / "airflow.db").mkdir(parents=True)  # no database can be made there
    failed = demo(tmp_path)
    assert failed.returncode == 1
    assert "demo: FAILED: `airflow db migrate` failed" in failed.stderr
    assert failed.stderr.rstrip().endswith("the whole log: ./.demo/demo.log")
    log = (tmp_path / ".demo" / "demo.log").read_text()
    assert "$ db migrate" in log and "Traceback" in log
