"""``make demo``: upscale a real image with a real Airflow DAG against the offline emulator.

Starts the emulator on a free port, runs ``airflow dags test example_vibedream_upscale`` in a
throwaway AIRFLOW_HOME (SQLite), and prints where the upscaled image landed and its pixel size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from airflow_vibedream.constants import TARGET_RESOLUTIONS
from airflow_vibedream.emulator.process import EmulatorProcess
from airflow_vibedream.lifecycle.ledger import LEDGER_DIR

REPO = Path(__file__).resolve().parent.parent
DEMO_KEY = "demo-key"


def airflow_env(home: Path, base_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "example_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT": json.dumps(
            {"conn_type": "vibedream", "host": base_url, "password": DEMO_KEY}
        ),
    }


def run(command: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("a") as handle:
        result = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        sys.stderr.write(log.read_text()[-6000:])
        raise SystemExit(
            f"demo: `{' '.join(command[1:3])}` failed (exit {result.returncode}); full log: {log}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target-resolution", default="4k", choices=list(TARGET_RESOLUTIONS))
    parser.add_argument("--output-format", default="png", choices=["jpeg", "png", "webp"])
    parser.add_argument("--output-dir", type=Path, default=REPO / "demo-output")
    args = parser.parse_args()

    output_dir = args.output_dir.resolve()
    home = Path(tempfile.mkdtemp(prefix="vibedream-demo-airflow-"))
    log = home / "demo.log"
    airflow = str(Path(sys.executable).parent / "airflow")
    try:
        with EmulatorProcess("--api-key", DEMO_KEY, "--processing-seconds", "3", log_path=log) as emulator:
            print(f"demo: emulator running at {emulator.base_url} (pid {emulator.pid})", flush=True)
            env = airflow_env(home, emulator.base_url)
            print("demo: preparing a throwaway Airflow database ...", flush=True)
            run([airflow, "db", "migrate"], env, log)
            conf = {
                # A 1280x720 test card the emulator generates: no network needed.
                "image": f"{emulator.base_url}/samples/1280x720.png",
                "target_resolution": args.target_resolution,
                "output_format": args.output_format,
                "output_path": str(output_dir),
            }
            print(f"demo: airflow dags test example_vibedream_upscale -c '{json.dumps(conf)}'", flush=True)
            before = set(output_dir.rglob("*")) if output_dir.exists() else set()
            run([airflow, "dags", "test", "example_vibedream_upscale", "-c", json.dumps(conf)], env, log)
        # The pay-once ledger's JSON documents live beside the images; only images are checked here.
        new_images = sorted(
            p for p in output_dir.rglob("*") if p.is_file() and p not in before and LEDGER_DIR not in p.parts
        )
        if not new_images:
            raise SystemExit(f"demo: the DAG succeeded but wrote no image under {output_dir}; log: {log}")
        expected = TARGET_RESOLUTIONS[args.target_resolution]
        for path in new_images:
            with Image.open(path) as image:
                width, height = image.size
                print(f"demo: upscaled image: {path} ({width}x{height} {image.format})")
            if max(width, height) != expected:
                raise SystemExit(f"demo: long edge is {max(width, height)} px, expected {expected}")
        print("demo: OK")
        return 0
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
