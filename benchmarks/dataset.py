"""What staging costs: one dataset batch over a local folder of tiny PNGs (each image copied to an
``s3://`` staging prefix, presigned, deleted at the end) against the same batch over the same images
in an ``s3://`` prefix (nothing staged), side by side in one run.

The batch runs in this process (it is the task process), so its CPU (``time.process_time``: every
thread) and wall time are the provider's own; moto's S3 server and the emulator are processes of
their own, their CPU shown apart. Both runs store every output in the dataset layout (a local
folder with ``metadata.jsonl``), with the ledger, ``max_concurrency=16``, waiting in the worker.

The emulator's ``--synthetic-outputs`` answers output URLs that do not exist (404): it is for load
tests of the API surface, and a batch that stores its outputs cannot be run on it. So the emulator
runs here with one 2K JPEG served as every job's output (rendered once, by its own resampler, from
an input of the benchmark's size): the API still fetches each input (the staged copy, or the
object), the provider still downloads, checks and stores a real 2K output per image, and the
emulator spends no CPU resampling. Staging's own CPU is also measured inside ``Staging.stage`` and
``Staging.clean`` (thread CPU of every call), not estimated.

The runs alternate (local, s3, s3, local: ``VIBEDREAM_BENCH_DATASET_ROUNDS`` runs of each, default
2), after one unmeasured warm-up batch of each kind. ``VIBEDREAM_BENCH_DATASET_IMAGES`` (default
2,000): 10,000 would take over half an hour on the project's 2-core machine (docs/benchmarks.md).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import machine, process_cpu_seconds, write_result

IMAGES = int(os.environ.get("VIBEDREAM_BENCH_DATASET_IMAGES", "2000"))
#: Images of each kind run once, unmeasured, first: imports, clients and connection pools warm.
WARMUP_IMAGES = 20
BUCKET = "bench-dataset"
KEY = "bench-key"
#: Every input is this small PNG (its content differs); every output is the same 2K JPEG.
INPUT_SIZE = (32, 24)
OUTPUT_NAME = "output.jpg"
REPO = Path(__file__).resolve().parent.parent
LOCAL, S3 = "local folder, staged", "s3:// prefix"
READY_PREFIX = "VibeDream emulator listening on "
#: The runs' order: alternating, so that a drift of the machine's load weighs on both sides alike.
ORDER = (LOCAL, S3, S3, LOCAL, LOCAL, S3, S3, LOCAL)
#: Runs of each source (``VIBEDREAM_BENCH_DATASET_ROUNDS``, 1 to 4).
ROUNDS = max(1, min(4, int(os.environ.get("VIBEDREAM_BENCH_DATASET_ROUNDS", "2"))))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the emulator with one real output for every job (a child process) ----------------------------


def serve_emulator(argv: list[str]) -> int:
    """``python -m benchmarks.dataset --emulator <emulator args>``: the emulator, each job's output
    the same pre-rendered 2K JPEG (downloadable, unlike ``--synthetic-outputs``'s)."""
    from airflow_vibedream.emulator import __main__ as emulator_main
    from airflow_vibedream.emulator.imaging import sample_image, upscale_to_file
    from airflow_vibedream.emulator.state import EmulatedPrediction, EmulatorState

    output = Path(tempfile.mkdtemp(prefix="vibedream-bench-dataset-output-")) / OUTPUT_NAME
    upscale_to_file(sample_image(*INPUT_SIZE, "PNG"), "2k", "jpeg", output)

    async def render(self: EmulatorState, prediction: EmulatedPrediction) -> list[str]:
        await self._fetch_input(prediction.request["image"])  # the API still fetches every input
        return [f"{self.assets_base_url}/outputs/{prediction.id}/{OUTPUT_NAME}"]

    def output_file(self: EmulatorState, prediction_id: str, name: str) -> Path | None:
        return output if prediction_id in self.predictions and name == OUTPUT_NAME else None

    EmulatorState._render = render  # type: ignore[method-assign]
    EmulatorState.output_file = output_file  # type: ignore[method-assign]
    return emulator_main.main(argv)


@contextmanager
def emulator_process(log: Path) -> Iterator[tuple[str, int]]:
    """The emulator above as a child process: (its URL, its pid); stopped by its pid."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.dataset",
            "--emulator",
            "--api-key",
            KEY,
            "--processing-seconds",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the ready line, or "" if it died first
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"the emulator did not start ({line!r}); see {log}")
        yield line[len(READY_PREFIX) :].strip(), process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def moto_process(log: Path) -> Iterator[tuple[str, int]]:
    """moto's S3 server as a child process on a free loopback port: (its URL, its pid)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # no ready line: its port answering is the event, polled with a bound
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"moto did not start; see {log}") from None
                time.sleep(0.1)
        yield endpoint, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the images ------------------------------------------------------------------------------------


def tiny_png(index: int) -> bytes:
    """A 32x24 PNG of its own bytes (each image one job: the ledger keys images by content)."""
    from PIL import Image

    image = Image.new("RGB", INPUT_SIZE, (index % 251, (index // 251) % 251, 128))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def relative_name(index: int) -> str:
    return f"part{index // 500:03d}/img{index:05d}.png"


def generate(root: Path, start: int, count: int) -> dict[str, bytes]:
    """``count`` images under ``root`` (generated once: the same bytes go to the S3 prefix)."""
    files = {relative_name(i): tiny_png(i) for i in range(start, start + count)}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


# -- the measured batch ------------------------------------------------------------------------------


class Ti:
    """The task instance attributes and XCom calls the batch uses."""

    dag_id = "bench_dataset"
    task_id = "batch"
    map_index = -1

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def xcom_push(self, key: str, value: Any) -> None:
        pass

    def xcom_pull(self, **_: Any) -> Any:
        return None


class Timed:
    """Calls, thread-CPU seconds and thread-seconds spent inside one method of a class, over every
    call in every thread (the method is wrapped in place until :meth:`restore`)."""

    def __init__(self, owner: type, name: str) -> None:
        self.owner, self.name = owner, name
        self.original: Callable[..., Any] = getattr(owner, name)
        self.lock = threading.Lock()
        self.reset()
        original = self.original

        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                with self.lock:
                    self.calls += 1
                    self.seconds += time.perf_counter() - wall
                    self.cpu_seconds += time.thread_time() - cpu

        setattr(owner, name, timed)

    def reset(self) -> None:
        self.calls, self.seconds, self.cpu_seconds = 0, 0.0, 0.0

    def restore(self) -> None:
        setattr(self.owner, self.name, self.original)


def run_batch(source: str, output: Path, run_id: str, staging_path: str | None) -> dict[str, Any]:
    from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator

    operator = VibeDreamBatchUpscaleOperator(
        task_id="batch",
        source=source,
        staging_path=staging_path,
        output_layout="dataset",
        target_resolution="2k",
        output_format="jpeg",
        output_path=str(output),
        max_concurrency=16,
        poll_interval=0.2,
        deferrable=False,
        progress_interval=60,
    )
    started, cpu = time.perf_counter(), time.process_time()
    summary = operator.execute({"ti": Ti(run_id)})  # type: ignore[typeddict-item]
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,  # the task process's own, every thread
        "summary": summary,
    }


def main() -> dict[str, Any]:
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="vibedream-bench-airflow-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    import boto3

    work = Path(tempfile.mkdtemp(prefix="vibedream-bench-dataset-"))
    generated = time.perf_counter()
    images = generate(work / "images", 0, IMAGES)
    warmup = generate(work / "warmup", IMAGES, WARMUP_IMAGES)
    generated = time.perf_counter() - generated
    with (
        moto_process(work / "moto.log") as (endpoint, moto_pid),
        emulator_process(work / "emulator.log") as (base_url, emulator_pid),
    ):
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=BUCKET)
        with ThreadPoolExecutor(16) as pool:  # the same bytes, as objects (not timed)
            uploads = [(f"in/{n}", d) for n, d in images.items()] + [
                (f"warm/{n}", d) for n, d in warmup.items()
            ]
            list(pool.map(lambda item: s3.put_object(Bucket=BUCKET, Key=item[0], Body=item[1]), uploads))
        os.environ["AIRFLOW_CONN_VIBEDREAM_DEFAULT"] = (
            f'{{"conn_type": "vibedream", "host": "{base_url}", "password": "{KEY}"}}'
        )
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = (
            '{"conn_type": "aws", "login": "testing", "password": "testing", '
            f'"extra": {{"endpoint_url": "{endpoint}", "region_name": "us-east-1"}}}}'
        )
        from airflow_vibedream.operators import batch as batch_module

        staging_class = vars(batch_module)["Staging"]  # the class the operator stages with
        stage = Timed(staging_class, "stage")
        clean = Timed(staging_class, "clean")

        def jobs() -> int:
            counters = httpx.get(f"{base_url}/_emulator/stats").json()["counters"]
            return int(counters.get("accepted_submissions", 0))

        def staged() -> int:
            return int(s3.list_objects_v2(Bucket=BUCKET, Prefix="staging/").get("KeyCount", 0))

        staging_path = f"s3://{BUCKET}/staging"
        try:
            for name, source, staging in (
                ("local", str(work / "warmup"), staging_path),
                ("s3", f"s3://{BUCKET}/warm/", None),
            ):
                run_batch(source, work / f"warmup-dataset-{name}", f"warmup-{name}", staging)
            sources = {LOCAL: (str(work / "images"), staging_path), S3: (f"s3://{BUCKET}/in/", None)}
            runs: list[dict[str, Any]] = []
            for number, kind in enumerate(ORDER[: 2 * ROUNDS], start=1):
                source, staging = sources[kind]
                stage.reset()
                clean.reset()
                before = (jobs(), process_cpu_seconds(moto_pid), process_cpu_seconds(emulator_pid))
                output = work / f"dataset-{number}"
                measured = run_batch(source, output, f"run{number}", staging)
                summary = measured.pop("summary")
                metadata = (output / "metadata.jsonl").read_text().splitlines()
                measured = {
                    "run": number,
                    "source": kind,
                    **measured,
                    "jobs": jobs() - before[0],
                    "moto_cpu_seconds": process_cpu_seconds(moto_pid) - before[1],
                    "emulator_cpu_seconds": process_cpu_seconds(emulator_pid) - before[2],
                    "completed": summary["completed"],
                    "metadata_lines": len(metadata),
                    "staged_left": staged(),
                    "stage": {
                        "calls": stage.calls,
                        "cpu_seconds": stage.cpu_seconds,
                        "seconds": stage.seconds,
                    },
                    "clean": {
                        "calls": clean.calls,
                        "cpu_seconds": clean.cpu_seconds,
                        "seconds": clean.seconds,
                    },
                }
                # A figure of a batch that did not do the whole job is no figure.
                done = (measured["completed"], measured["jobs"], len(metadata), measured["staged_left"])
                if done != (IMAGES, IMAGES, IMAGES, 0):
                    raise RuntimeError(f"{kind}: not every image went through: {measured}")
                runs.append(measured)
                shutil.rmtree(output)  # ~150 KB of output per image
                print(
                    f"run {number}, {kind}: {measured['seconds']:.1f} s, "
                    f"CPU {measured['cpu_seconds']:.1f} s, {measured['jobs']} jobs, {stage.calls} staged",
                    flush=True,
                )
        finally:
            stage.restore()
            clean.restore()
            shutil.rmtree(work, ignore_errors=True)

    data = {
        "machine": machine(),
        "images": IMAGES,
        "rounds": ROUNDS,
        "input": f"{INPUT_SIZE[0]}x{INPUT_SIZE[1]} PNG",
        "output": "2K JPEG (2048x1536), the same for every job",
        "generated_seconds": round(generated, 1),
        "runs": [rounded(run) for run in runs],
        **ratios(runs),
    }
    write_result("dataset", data, table(runs, data))
    return data


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def total(runs: list[dict[str, Any]], kind: str, field: str) -> float:
    return float(sum(run[field] for run in runs if run["source"] == kind))


def ratios(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Local over S3, from each side's total (as many runs on each side); staging's measured CPU."""
    staging_cpu = sum(run["stage"]["cpu_seconds"] + run["clean"]["cpu_seconds"] for run in runs)
    return {
        "wall_ratio": round(total(runs, LOCAL, "seconds") / total(runs, S3, "seconds"), 4),
        "cpu_ratio": round(total(runs, LOCAL, "cpu_seconds") / total(runs, S3, "cpu_seconds"), 4),
        "staging_cpu_ms_per_image": round(1000 * staging_cpu / (ROUNDS * IMAGES), 3),
        "staging_cpu_share_of_local": round(staging_cpu / total(runs, LOCAL, "cpu_seconds"), 4),
    }


def table(runs: list[dict[str, Any]], data: dict[str, Any]) -> str:
    rows = [
        f"| {r['run']} | {r['source']} | {r['seconds']:.1f} s | {r['cpu_seconds']:.1f} s | "
        f"{1000 * r['cpu_seconds'] / IMAGES:.1f} ms | "
        f"{1000 * (r['stage']['cpu_seconds'] + r['clean']['cpu_seconds']) / IMAGES:.1f} ms | "
        f"{r['stage']['calls']:,} | {r['jobs']:,} | {r['metadata_lines']:,} | "
        f"{r['moto_cpu_seconds']:.1f} s | {r['emulator_cpu_seconds']:.1f} s |"
        for r in runs
    ]
    local_staged = [r for r in runs if r["source"] == LOCAL]
    upload_ms = (
        1000
        * sum(r["stage"]["seconds"] for r in local_staged)
        / sum(r["stage"]["calls"] for r in local_staged)
    )
    return "\n".join(
        [
            f"### Staging: a dataset batch of {IMAGES:,} tiny PNGs from a local folder (staged in S3) vs "
            "the same images from an s3:// prefix",
            "",
            "| run | source | wall time | the provider's CPU (task process) | its CPU per image | of which "
            "staging (inside `Staging.stage`, `.clean`) | staged copies | jobs | metadata.jsonl lines | "
            "moto CPU | emulator CPU |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            f"| **local / s3** | | **{data['wall_ratio']:.2f}x** | **{data['cpu_ratio']:.2f}x** | | "
            f"{data['staging_cpu_ms_per_image']:.1f} ms ({data['staging_cpu_share_of_local']:.1%} of the "
            "local runs' CPU) | | | | | |",
            "",
            f"- every run: {IMAGES:,} jobs, {IMAGES:,} outputs in the dataset layout and as many "
            "`metadata.jsonl` lines; the staging prefix empty after each local run "
            f"({', '.join(str(r['staged_left']) for r in local_staged)} objects left)",
            f"- a staged copy's upload takes {upload_ms:.0f} ms of a submit thread's time on average "
            "(waiting on S3, not CPU): each local image's submit starts that much later",
            "",
        ]
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--emulator"]:
        sys.exit(serve_emulator(sys.argv[2:]))
    main()
