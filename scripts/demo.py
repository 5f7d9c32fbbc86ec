"""``make demo``: upscale a real image with a real Airflow DAG against the offline emulator.

Starts the emulator on a free port, runs ``airflow dags test example_vibedream_upscale`` in an
AIRFLOW_HOME of its own (``.demo/``, SQLite, kept between runs with its log), and prints where the
upscaled image is and its pixel size. It can be run any number of times: from the second run on,
the pay-once ledger beside the outputs knows the image, so the run reuses it (and says so) instead
of paying for it again.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from PIL import Image

from airflow_vibedream.constants import TARGET_RESOLUTIONS
from airflow_vibedream.emulator.process import EmulatorProcess

REPO = Path(__file__).resolve().parent.parent
DEMO_KEY = "demo-key"
DAG_ID = "example_vibedream_upscale"
TASK_ID = "upscale"


def airflow_env(home: Path, base_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "example_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        # `dags test` runs the trigger in the task's own process: there is no scheduler whose race the
        # settle time guards against (see docs/operators.md), so the demo does not wait it out.
        "AIRFLOW__VIBEDREAM__RESUME_SETTLE_SECONDS": "0",
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT": json.dumps(
            {"conn_type": "vibedream", "host": base_url, "password": DEMO_KEY}
        ),
    }


def shown(path: Path) -> str:
    """``path`` as a person types it here: ``./…`` below the working directory, else absolute."""
    try:
        return f"./{path.relative_to(Path.cwd())}"
    except ValueError:
        return str(path)


class DemoFailed(Exception):
    """The demo did not show an upscaled image; the message says what happened."""


def run(command: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("a") as handle:
        handle.write(f"\n$ {' '.join(command[1:4])} ...\n")
        handle.flush()
        result = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise DemoFailed(f"`airflow {' '.join(command[1:3])}` failed (exit {result.returncode})")


def migrate_once(airflow: str, home: Path, env: dict[str, str], log: Path) -> None:
    """``airflow db migrate`` when the database is new or was made by another Airflow version: the
    check itself takes Airflow ~15 s, so an up-to-date database is recognised by a stamp."""
    stamp = home / "migrated-for-airflow"
    wanted = version("apache-airflow")
    if (home / "airflow.db").exists() and stamp.exists() and stamp.read_text() == wanted:
        print(f"demo: reusing the Airflow database in {shown(home)}", flush=True)
        return
    print(f"demo: preparing an Airflow database in {shown(home)} (kept for the next run) ...", flush=True)
    run([airflow, "db", "migrate"], env, log)
    stamp.write_text(wanted)


@dataclass(frozen=True)
class Outcome:
    """What the DAG run's upscale task returned (its XCom ``return_value``).

    :param run_id: the DAG run.
    :param result: the task's result dict (``outputs``, ``cost_cents``, ``reused`` ...).
    """

    run_id: str
    result: dict[str, Any]


def latest_outcome(database: Path) -> Outcome:
    """The newest run of the DAG and its upscale task's result, from the demo's own SQLite database
    (`dags test` prints no machine-readable result; the task's XCom is the result itself)."""
    with sqlite3.connect(database) as db:
        found = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
        ).fetchone()
        if found is None:
            raise DemoFailed("`dags test` made no DAG run")
        run_id, state = found
        if state != "success":
            raise DemoFailed(f"DAG run {run_id} ended {state}")
        value = db.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = 'return_value'",
            (DAG_ID, run_id, TASK_ID),
        ).fetchone()
    result = json.loads(value[0]) if value and isinstance(value[0], str) else None
    if not isinstance(result, dict) or not result.get("outputs"):
        raise DemoFailed(f"DAG run {run_id} succeeded but its {TASK_ID} task returned no output")
    return Outcome(str(run_id), result)


def report(outcome: Outcome, output_dir: Path, target_resolution: str) -> list[str]:
    """The lines that tell the user what happened; :class:`DemoFailed` when the image is wrong."""
    lines = []
    for uri in outcome.result["outputs"]:
        path = Path(str(uri).removeprefix("file://"))
        if not path.is_file():
            raise DemoFailed(f"the result names {uri}, which is no file")
        with Image.open(path) as image:
            width, height = image.size
            kind = image.format
        expected = TARGET_RESOLUTIONS[target_resolution]
        if max(width, height) != expected:
            raise DemoFailed(f"{path}: long edge is {max(width, height)} px, expected {expected}")
        cost = outcome.result.get("cost_cents")
        if outcome.result.get("reused"):
            ledger = shown(output_dir / "_vibedream_ledger")
            lines.append(
                f"demo: reused image: {shown(path)} ({width}x{height} {kind}, 0 cents): the ledger "
                f"({ledger}) knew these bytes from an earlier run, nothing paid"
            )
        else:
            lines.append(f"demo: upscaled image: {shown(path)} ({width}x{height} {kind}, {cost} cents)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target-resolution", default="4k", choices=list(TARGET_RESOLUTIONS))
    parser.add_argument("--output-format", default="png", choices=["jpeg", "png", "webp"])
    parser.add_argument("--output-dir", type=Path, default=REPO / "demo-output")
    parser.add_argument(
        "--home", type=Path, default=REPO / ".demo", help="the demo's AIRFLOW_HOME, kept between runs"
    )
    args = parser.parse_args()

    output_dir = args.output_dir.resolve()
    home = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "demo.log"
    log.write_text("")  # this run's log only; it stays here after the run, failed or not
    airflow = str(Path(sys.executable).parent / "airflow")
    try:
        with EmulatorProcess("--api-key", DEMO_KEY, "--processing-seconds", "2", log_path=log) as emulator:
            print(f"demo: emulator running at {emulator.base_url} (pid {emulator.pid})", flush=True)
            env = airflow_env(home, emulator.base_url)
            migrate_once(airflow, home, env, log)
            conf = {
                # A 1280x720 test card the emulator generates: no network needed.
                "image": f"{emulator.base_url}/samples/1280x720.png",
                "target_resolution": args.target_resolution,
                "output_format": args.output_format,
                "output_path": str(output_dir),
            }
            print(f"demo: airflow dags test {DAG_ID} -c '{json.dumps(conf)}'", flush=True)
            # -f: only the example's own file is parsed (the others import providers it does not need).
            dag_file = str(REPO / "example_dags" / f"{DAG_ID}.py")
            run([airflow, "dags", "test", DAG_ID, "-f", dag_file, "-c", json.dumps(conf)], env, log)
        for line in report(latest_outcome(home / "airflow.db"), output_dir, args.target_resolution):
            print(line)
    except (DemoFailed, RuntimeError, OSError, sqlite3.Error) as exc:
        sys.stderr.write(log.read_text(errors="replace")[-6000:])
        print(f"demo: FAILED: {exc}; the whole log: {shown(log)}", file=sys.stderr)
        return 1
    print(f"demo: OK (log: {shown(log)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
