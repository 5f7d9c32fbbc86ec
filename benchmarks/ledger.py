"""The ledger's cost and its pay-off, side by side in one run: one batch over an S3 prefix of
``VIBEDREAM_BENCH_LEDGER_IMAGES`` images (default 10,000) in moto's S3 server, outputs into moto,
the emulator as a separate process (jobs finish at once, so the batch's own work is what is timed):

- ``without ledger``: the batch as it was before the ledger (``ledger_use`` off);
- ``with ledger``: the same batch into another output prefix, the ledger on (identities from the
  listing, one lookup, group intents, a journal, one page);
- ``second run``: the same batch again into the ledger's prefix, as tomorrow's run would be.

Goals (issue 19): the ledger adds at most 5% to the batch's wall time; the second run takes at most
10% of the first's, with 0 jobs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import httpx

from benchmarks.common import machine, write_result

IMAGES = int(os.environ.get("VIBEDREAM_BENCH_LEDGER_IMAGES", "10000"))
BUCKET = "bench-ledger"
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Ti:
    """The task instance attributes and XCom calls the batch uses."""

    dag_id = "bench"
    task_id = "batch"
    map_index = -1

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def xcom_push(self, key: str, value: Any) -> None:
        pass

    def xcom_pull(self, **_: Any) -> Any:
        return None


def run_batch(output: str, run_id: str, *, ledger: bool) -> dict[str, Any]:
    from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator

    operator = VibeDreamBatchUpscaleOperator(
        task_id="batch",
        s3_prefix=f"s3://{BUCKET}/in/",
        target_resolution="2k",
        output_format="jpeg",
        output_path=output,
        max_concurrency=16,
        poll_interval=0.2,
        deferrable=False,
        progress_interval=60,
    )
    started, cpu = time.perf_counter(), time.process_time()
    if ledger:
        summary = operator.execute({"ti": Ti(run_id)})
    else:
        with mock.patch.object(VibeDreamBatchUpscaleOperator, "ledger_use", return_value=None):
            summary = operator.execute({"ti": Ti(run_id)})
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,  # the batch's own (this process, every thread)
        "summary": summary,
    }


def main() -> dict[str, Any]:
    import boto3

    from airflow_vibedream.emulator.imaging import sample_image
    from airflow_vibedream.emulator.process import EmulatorProcess

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    logs = Path(tempfile.mkdtemp(prefix="vibedream-bench-ledger-"))
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=(logs / "moto.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=BUCKET)
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: s3.put_object(
                        Bucket=BUCKET,
                        Key=f"in/img{i:05d}.png",
                        Body=sample_image(32 + i % 100, 24 + i // 100, "PNG"),
                    ),
                    range(IMAGES),
                )
            )
        with EmulatorProcess(
            "--api-key", KEY, "--processing-seconds", "0", log_path=logs / "emulator.log"
        ) as emulator:
            os.environ["AIRFLOW_CONN_VIBEDREAM_DEFAULT"] = (
                f'{{"conn_type": "vibedream", "host": "{emulator.base_url}", "password": "{KEY}"}}'
            )
            os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = (
                '{"conn_type": "aws", "login": "testing", "password": "testing", '
                f'"extra": {{"endpoint_url": "{endpoint}", "region_name": "us-east-1"}}}}'
            )

            def jobs() -> int:
                counters = httpx.get(f"{emulator.base_url}/_emulator/stats").json()["counters"]
                return int(counters.get("accepted_submissions", 0))

            results: dict[str, dict[str, Any]] = {}
            for name, output, run_id, ledger in (
                ("without ledger", f"s3://{BUCKET}/out-plain", "day1", False),
                ("with ledger", f"s3://{BUCKET}/out-ledger", "day1", True),
                ("second run", f"s3://{BUCKET}/out-ledger", "day2", True),
            ):
                before = jobs()
                measured = run_batch(output, run_id, ledger=ledger)
                measured["jobs"] = jobs() - before
                results[name] = measured
                print(f"{name}: {measured['seconds']:.1f} s, {measured['jobs']} jobs", flush=True)
    finally:
        moto.terminate()
        moto.wait(timeout=30)

    plain = results["without ledger"]["seconds"]
    first = results["with ledger"]["seconds"]
    second = results["second run"]["seconds"]
    overhead = first / plain - 1
    cpu_overhead = results["with ledger"]["cpu_seconds"] / results["without ledger"]["cpu_seconds"] - 1
    share = second / first
    data = {
        "machine": machine(),
        "images": IMAGES,
        "results": {
            name: {
                "seconds": round(r["seconds"], 2),
                "cpu_seconds": round(r["cpu_seconds"], 2),
                "jobs": r["jobs"],
                "summary": r["summary"],
            }
            for name, r in results.items()
        },
        "ledger_overhead": round(overhead, 4),
        "ledger_cpu_overhead": round(cpu_overhead, 4),
        "second_run_share": round(share, 4),
    }
    met = {True: "met", False: "not met"}
    table = "\n".join(
        [
            f"### Ledger: a batch of {IMAGES:,} images from an S3 prefix into S3 (moto), "
            "jobs finishing at once",
            "",
            "| run | wall time | the batch's CPU | jobs | reused |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {r['seconds']:.1f} s | {r['cpu_seconds']:.1f} s | {r['jobs']:,} | "
                f"{r['summary'].get('reused', 0):,} |"
                for name, r in results.items()
            ),
            "",
            f"- the ledger's cost: **{overhead:+.1%}** of the batch's wall time (goal <= +5%: "
            f"{met[overhead <= 0.05]}); of the batch's own CPU: {cpu_overhead:+.1%}",
            f"- the second run: **{share:.1%}** of the first's wall time with "
            f"{results['second run']['jobs']} jobs (goal <= 10% and 0 jobs: "
            f"{met[share <= 0.10 and results['second run']['jobs'] == 0]})",
            "",
        ]
    )
    write_result("ledger", data, table)
    print(table)
    return data


if __name__ == "__main__":
    main()
