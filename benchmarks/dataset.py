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
emulator spends no CPU resampling. Staging's own CPU is also measured by itself, after the runs:
every image copied by ``Staging.stage`` and deleted by ``Staging.clean`` with nothing else running
(this process's CPU, every thread).

The runs alternate (local, s3, s3, local: ``VIBEDREAM_BENCH_DATASET_ROUNDS`` runs of each, default
2), after one unmeasured warm-up batch of each kind. ``VIBEDREAM_BENCH_DATASET_IMAGES`` (default
2,000): 10,000 would take over half an hour on the project's 2-core machine (docs/benchmarks.md).
"""

from __future__ import annotations

import atexit
import hashlib
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


def serve_emulator(folder: Path, argv: list[str]) -> int:
    """``python -m benchmarks.dataset --emulator <folder> <emulator args>``: the emulator, each job's
    output the same 2K JPEG rendered into ``folder`` (downloadable, unlike ``--synthetic-outputs``'s;
    the parent removes the folder)."""
    from airflow_vibedream.emulator import __main__ as emulator_main
    from airflow_vibedream.emulator.imaging import sample_image, upscale_to_file
    from airflow_vibedream.emulator.state import EmulatedPrediction, EmulatorState

    output = folder / OUTPUT_NAME
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
def emulator_process(work: Path) -> Iterator[tuple[str, int]]:
    """The emulator above as a child process, its output and log in ``work``: (its URL, its pid);
    stopped by its pid."""
    (work / "emulator").mkdir()
    log = work / "emulator.log"
    with log.open("ab") as stderr:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "benchmarks.dataset", "--emulator", str(work / "emulator")),
                *("--api-key", KEY, "--processing-seconds", "0"),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
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
    with log.open("ab") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
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
    """Calls of one method of a class and the thread-seconds spent inside them, over every call in
    every thread (the method is wrapped in place until :meth:`restore`). Not its CPU: an upload's
    work is done by s3transfer's own threads (see :func:`staging_alone`)."""

    def __init__(self, owner: type, name: str) -> None:
        self.owner, self.name = owner, name
        self.original: Callable[..., Any] = getattr(owner, name)
        self.lock = threading.Lock()
        self.reset()
        original = self.original

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                with self.lock:
                    self.calls += 1
                    self.seconds += time.perf_counter() - started

        setattr(owner, name, timed)

    def reset(self) -> None:
        self.calls, self.seconds = 0, 0.0

    def restore(self) -> None:
        setattr(self.owner, self.name, self.original)


def staging_alone(
    staging_class: type, staging_path: str, root: Path, files: dict[str, bytes]
) -> dict[str, Any]:
    """Staging by itself, measured: every image of the local folder copied by ``Staging.stage`` (one
    after another, nothing else running in this process) and all deleted by ``Staging.clean``; this
    process's CPU with every thread (s3transfer uploads from threads of its own). The hashes are
    known beforehand, as the batch knows them from the ledger's identities."""
    staging = staging_class(staging_path, "alone/run/batch", "aws_default")
    todo = [(str(root / name), hashlib.sha256(data).hexdigest()) for name, data in files.items()]
    cpu, wall = time.process_time(), time.perf_counter()
    for path, sha in todo:
        staging.stage(path, sha)
    stage_cpu, stage_seconds = time.process_time() - cpu, time.perf_counter() - wall
    cpu, wall = time.process_time(), time.perf_counter()
    deleted = staging.clean()
    return {
        "copies": len(todo),
        "deleted": deleted,
        "stage_cpu_seconds": stage_cpu,
        "stage_seconds": stage_seconds,
        "clean_cpu_seconds": time.process_time() - cpu,
        "clean_seconds": time.perf_counter() - wall,
    }


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
    if "AIRFLOW_HOME" not in os.environ:  # a throwaway one, removed when this process exits
        home = tempfile.mkdtemp(prefix="vibedream-bench-airflow-")
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        os.environ["AIRFLOW_HOME"] = home
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    import boto3

    work = Path(tempfile.mkdtemp(prefix="vibedream-bench-dataset-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # also when interrupted
    generated = time.perf_counter()
    images = generate(work / "images", 0, IMAGES)
    warmup = generate(work / "warmup", IMAGES, WARMUP_IMAGES)
    generated = time.perf_counter() - generated
    with (
        moto_process(work / "moto.log") as (endpoint, moto_pid),
        emulator_process(work) as (base_url, emulator_pid),
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
                    # Other work on the machine lengthens the wall time (not this process's CPU).
                    "load_average": os.getloadavg()[0],
                    "stage": {"calls": stage.calls, "seconds": stage.seconds},
                    "clean": {"calls": clean.calls, "seconds": clean.seconds},
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
        try:
            alone = staging_alone(staging_class, staging_path, work / "images", images)
            if (alone["deleted"], staged()) != (IMAGES, 0):
                raise RuntimeError(f"staging alone did not copy and delete every image: {alone}")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    data = {
        "machine": machine(),
        "images": IMAGES,
        "rounds": ROUNDS,
        "input": f"{INPUT_SIZE[0]}x{INPUT_SIZE[1]} PNG",
        "output": "2K JPEG (2048x1536), the same for every job",
        "generated_seconds": round(generated, 1),
        "runs": [rounded(run) for run in runs],
        "staging_alone": rounded(alone),
        **ratios(runs, alone),
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


def ratios(runs: list[dict[str, Any]], alone: dict[str, Any]) -> dict[str, float]:
    """Local over S3, from each side's total (as many runs on each side), and the difference per
    image; staging's own CPU per image, measured alone."""
    local_cpu, s3_cpu = total(runs, LOCAL, "cpu_seconds"), total(runs, S3, "cpu_seconds")
    alone_cpu = alone["stage_cpu_seconds"] + alone["clean_cpu_seconds"]
    return {
        "wall_ratio": round(total(runs, LOCAL, "seconds") / total(runs, S3, "seconds"), 4),
        "cpu_ratio": round(local_cpu / s3_cpu, 4),
        "cpu_ms_per_image_local_minus_s3": round(1000 * (local_cpu - s3_cpu) / (ROUNDS * IMAGES), 3),
        "staging_alone_cpu_ms_per_image": round(1000 * alone_cpu / alone["copies"], 3),
        "staging_alone_share_of_local": round(
            alone_cpu / alone["copies"] / (local_cpu / (ROUNDS * IMAGES)), 4
        ),
    }


def table(runs: list[dict[str, Any]], data: dict[str, Any]) -> str:
    rows = [
        f"| {r['run']} | {r['source']} | {r['seconds']:.1f} s | {r['cpu_seconds']:.1f} s | "
        f"{1000 * r['cpu_seconds'] / IMAGES:.1f} ms | {r['stage']['calls']:,} | {r['jobs']:,} | "
        f"{r['metadata_lines']:,} | {r['moto_cpu_seconds']:.1f} s | {r['emulator_cpu_seconds']:.1f} s | "
        f"{r['load_average']:.1f} |"
        for r in runs
    ]
    local = [r for r in runs if r["source"] == LOCAL]
    upload_ms = 1000 * sum(r["stage"]["seconds"] for r in local) / sum(r["stage"]["calls"] for r in local)
    alone = data["staging_alone"]
    return "\n".join(
        [
            f"### Staging: a dataset batch of {IMAGES:,} tiny PNGs from a local folder (staged in S3) vs "
            "the same images from an s3:// prefix",
            "",
            "| run | source | wall time | the provider's CPU (task process) | per image | staged copies | "
            "jobs | metadata.jsonl lines | moto CPU | emulator CPU | machine load (1 min, at the end) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            f"| **local / s3** | | **{data['wall_ratio']:.2f}x** | **{data['cpu_ratio']:.2f}x** | "
            f"{data['cpu_ms_per_image_local_minus_s3']:+.1f} ms | | | | | | |",
            "",
            f"- staging alone, measured in the same process: {alone['copies']:,} copies by `Staging.stage` "
            f"in {alone['stage_seconds']:.1f} s, then `Staging.clean` in {alone['clean_seconds']:.1f} s: "
            f"**{data['staging_alone_cpu_ms_per_image']:.1f} ms of CPU per image** "
            f"({data['staging_alone_share_of_local']:.1%} of a local run's CPU per image)",
            f"- in the batch, a staged copy's upload held its submit thread {upload_ms:.0f} ms on average "
            "(16 at once, waiting on S3 more than working)",
            f"- every run: {IMAGES:,} jobs, {IMAGES:,} outputs in the dataset layout and as many "
            "`metadata.jsonl` lines; the staging prefix empty after each local run "
            f"({', '.join(str(r['staged_left']) for r in local)} objects left)",
            "",
        ]
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--emulator"]:
        sys.exit(serve_emulator(Path(sys.argv[2]), sys.argv[3:]))
    main()
