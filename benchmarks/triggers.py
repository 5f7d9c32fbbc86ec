"""Triggerer scale: N concurrent prediction triggers in one event loop, against the emulator (its own
process, synthetic outputs), side by side with a peer-style trigger that polls as apache/airflow's
HTTP provider trigger does (aiohttp, a new session per poll, a fixed 1 s interval).

Two workloads: ``A`` jobs of 5-30 s; ``B`` jobs of 5-60 s with a 2% tail of 5-10 minutes.

Per run (a fresh child process each): CPU seconds per finished prediction, polls per prediction,
peak RSS growth per trigger, p50/p99 detection delay (event time minus ``completedAt``, or minus the
trigger's start for jobs that finished before it began; p99 also for jobs under a minute), p99
event-loop lag with the interpreter's default garbage-collector settings, full (and young)
collections per thousand polls, and the emulator's CPU. Before the measured wave, a warm-up wave of
the same kind of jobs runs in the same process (a triggerer that has been up a while has seen jobs
finish; the learned schedule needs that), and is not counted.

Goals (issue 14): <= 0.3x the peer's CPU per prediction, p99 detection <= 2 s for jobs under a
minute, p99 loop lag < 100 ms, <= 5 KiB per trigger.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import RssGrowth, child_env, machine, process_cpu_seconds, write_result

KEY = "bench-key"
SIZES = tuple(int(n) for n in os.environ.get("VIBEDREAM_BENCH_TRIGGERS", "1000,5000,10000").split(","))
KINDS = ("provider", "peer")
WORKLOADS = {
    "A": ("jobs 5-30 s", ["--processing-seconds", "5", "--processing-seconds-max", "30"]),
    "B": (
        "jobs 5-60 s, 2% of 5-10 min",
        ["--processing-seconds", "5", "--processing-seconds-max", "60", "--tail-share", "0.02"],
    ),
    # Jobs of one length: the CPU of a poll, side by side with the floor (benchmarks/poll_cost.py).
    "C": ("jobs of 20 s", ["--processing-seconds", "20"]),
    # An API across the internet: every poll answered after 100 ms (benchmarks/far_api.py).
    "F": (
        "jobs 5-30 s, every poll answered after 100 ms",
        [
            "--processing-seconds",
            "5",
            "--processing-seconds-max",
            "30",
            "--fault",
            '{"route": "poll", "kind": "slow", "delay": 0.1}',
        ],
    ),
}
SELECTED = tuple(os.environ.get("VIBEDREAM_BENCH_WORKLOADS", "A,B").split(","))
#: Sizes per workload, when not all: ``VIBEDREAM_BENCH_SIZES_B=1000`` (B's tail makes each run >= 10 min).
WARM_UP = int(os.environ.get("VIBEDREAM_BENCH_WARM_UP", "300"))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def peer_style_wait(base_url: str, prediction_id: str) -> dict[str, Any]:
    """What peers do: a new aiohttp session for every poll, every second."""
    import aiohttp

    url = f"{base_url}/api/v1/predictions/{prediction_id}"
    while True:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers={"Authorization": f"Bearer {KEY}"}) as response,
        ):
            body = await response.json()
        if body["status"] in ("completed", "failed"):
            return dict(body)
        await asyncio.sleep(1.0)


_FLOOR: dict[str, Any] = {}


async def floor_wait(base_url: str, prediction_id: str) -> dict[str, Any]:
    """The floor of a poll's cost: one shared keep-alive aiohttp session, a GET and a JSON parse per
    poll, every second, nothing else (no retries, no checks, no schedule)."""
    import aiohttp

    session = _FLOOR.get("session")
    if session is None:
        session = _FLOOR["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    url = f"{base_url}/api/v1/predictions/{prediction_id}"
    while True:
        async with session.get(url, headers={"Authorization": f"Bearer {KEY}"}) as response:
            body = await response.json()
        if body["status"] in ("completed", "failed"):
            return dict(body)
        await asyncio.sleep(1.0)


async def provider_wait(prediction_id: str, created_at: float) -> dict[str, Any]:
    from airflow_vibedream.triggers.vibedream import VibeDreamPredictionTrigger

    # The operators' default interval (1.8 s), or another one (``VIBEDREAM_BENCH_POLL_INTERVAL``).
    chosen = os.environ.get("VIBEDREAM_BENCH_POLL_INTERVAL")
    interval: dict[str, Any] = {"poll_interval": float(chosen)} if chosen else {}
    try:  # as the operator defers it: the job's kind and creation time
        trigger = VibeDreamPredictionTrigger(
            prediction_id, duration_kind="image-upscaler:2k", created_at=created_at, **interval
        )
    except TypeError:  # a provider from before the learned schedule (VIBEDREAM_BENCH_PREVIOUS)
        trigger = VibeDreamPredictionTrigger(prediction_id)
    async for event in trigger.run():
        return dict(event.payload["prediction"] or {})
    raise AssertionError("no event")


async def submit_all(base_url: str, count: int) -> list[tuple[str, float]]:
    import httpx

    slots = asyncio.Semaphore(100)
    body = {"image": f"{base_url}/samples/8x8.png", "target_resolution": "2k", "output_format": "jpeg"}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:

        async def one() -> tuple[str, float]:
            async with slots:
                response = await client.post(
                    f"{base_url}/api/v1/models/image-upscaler/generate",
                    json=body,
                    headers={"Authorization": f"Bearer {KEY}"},
                )
                answer = response.json()
                created = datetime.fromisoformat(answer["createdAt"].replace("Z", "+00:00")).timestamp()
                return str(answer["id"]), created

        return list(await asyncio.gather(*(one() for _ in range(count))))


class GcPauses:
    """Durations of the garbage collector's full (generation 2) collections inside a block: each one
    stops the event loop for as long as it walks every object of the process (Airflow's included)."""

    def __init__(self) -> None:
        self.full: list[float] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.full.append(time.perf_counter() - self._started)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


async def api_requests(base_url: str) -> int:
    """API requests the emulator has answered so far (its control routes are not counted)."""
    import httpx

    async with httpx.AsyncClient() as client:
        stats = (await client.get(f"{base_url}/_emulator/stats")).json()
    return int(stats["counters"].get("requests", 0))


async def warm_up(kind: str, base_url: str, prediction_id: str) -> None:
    """One poll through the same path first: a triggerer has its imports and connection machinery
    loaded long before our triggers arrive, so the measurement must not pay for them either."""
    import aiohttp

    from airflow_vibedream.hooks.vibedream import VibeDreamHook

    if kind == "provider":
        await (await VibeDreamHook().get_shared_async_client()).get_prediction(prediction_id)
    else:
        url = f"{base_url}/api/v1/predictions/{prediction_id}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers={"Authorization": f"Bearer {KEY}"}),
        ):
            pass


async def wait_for(kind: str, base_url: str, prediction_id: str, created_at: float) -> dict[str, Any]:
    if kind == "provider":
        return await provider_wait(prediction_id, created_at)
    if kind == "floor":
        return await floor_wait(base_url, prediction_id)
    return await peer_style_wait(base_url, prediction_id)


async def warm_up_wave(kind: str, base_url: str) -> None:
    """Jobs of the same kind first, as a triggerer that has been up a while has seen; the wave ends
    when 90% of it finished (or after 3 minutes), the rest cancelled."""
    if WARM_UP <= 0:
        return
    waits = [
        asyncio.ensure_future(wait_for(kind, base_url, pid, created))
        for pid, created in await submit_all(base_url, WARM_UP)
    ]
    enough = asyncio.Event()
    finished = 0

    def count(_: object) -> None:
        nonlocal finished
        finished += 1
        if finished >= 0.9 * len(waits):
            enough.set()

    for wait in waits:
        wait.add_done_callback(count)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(enough.wait(), timeout=180)
    for wait in waits:
        wait.cancel()
    await asyncio.gather(*waits, return_exceptions=True)


async def measure(kind: str, count: int, base_url: str, emulator_pid: int) -> dict[str, Any]:
    await warm_up_wave(kind, base_url)
    jobs = await submit_all(base_url, count)
    await warm_up(kind, base_url, jobs[0][0])
    lags: list[float] = []
    stop = asyncio.Event()

    windows: list[int] = []  # the poll window's size, sampled with the loop lag (provider only)

    async def watch_loop() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.05)
            lags.append(time.perf_counter() - before - 0.05)
            windows.extend(poll_windows())

    delays: list[float] = []
    short_delays: list[float] = []  # jobs under a minute: the detection goal is theirs

    async def one(prediction_id: str, created_at: float) -> None:
        started = time.time()
        prediction = await wait_for(kind, base_url, prediction_id, created_at)
        completed = prediction.get("completed_at") or prediction.get("completedAt")
        done_at = datetime.fromisoformat(str(completed).replace("Z", "+00:00")).timestamp()
        delays.append(time.time() - max(done_at, started))
        if done_at - created_at < 60:
            short_delays.append(delays[-1])

    requests_before = await api_requests(base_url)
    if os.environ.get("VIBEDREAM_BENCH_GC_FREEZE") == "1":
        # What Airflow's scheduler and DAG processor do (the triggerer does not): move every object
        # alive now (imports, the warmed-up client) out of the collector's reach.
        gc.freeze()
    pauses = GcPauses()
    collections = [stats["collections"] for stats in gc.get_stats()]
    watcher = asyncio.create_task(watch_loop())
    emulator_cpu = process_cpu_seconds(emulator_pid)
    cpu = cpu_seconds()
    wall = time.perf_counter()
    # Triggers hold their memory for their whole life, so a slow sampler sees the peak; a fast one
    # would add its own CPU to what is measured (the same for both kinds, which flatters the ratio).
    with RssGrowth(interval=0.1) as rss, pauses:
        await asyncio.gather(*(one(pid, created) for pid, created in jobs))
    wall = time.perf_counter() - wall
    cpu = cpu_seconds() - cpu
    emulator_cpu = process_cpu_seconds(emulator_pid) - emulator_cpu
    stop.set()
    await watcher
    polls = await api_requests(base_url) - requests_before
    collections = [
        stats["collections"] - before for stats, before in zip(gc.get_stats(), collections, strict=True)
    ]
    if kind == "provider":
        from airflow_vibedream.hooks.shared import aclose_shared_async_clients

        await aclose_shared_async_clients()
    if "session" in _FLOOR:
        await _FLOOR.pop("session").close()
    return {
        "kind": kind,
        "triggers": count,
        "finished": len(delays),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "cpu_ms_per_prediction": 1000 * cpu / max(1, len(delays)),
        "polls_per_prediction": polls / max(1, len(delays)),
        "cpu_ms_per_poll": 1000 * cpu / max(1, polls),
        "rss_growth_mib": rss.growth_mib,
        "kib_per_trigger": rss.growth_mib * 1024 / count,
        "detection_p50_s": percentile(delays, 0.5),
        "detection_p99_s": percentile(delays, 0.99),
        "detection_p99_under_a_minute_s": percentile(short_delays, 0.99),
        "young_collections_per_1000_polls": 1000 * collections[0] / max(1, polls),
        "gc_threshold0": gc.get_threshold()[0],
        "full_collections_per_1000_polls": 1000 * collections[2] / max(1, polls),
        "loop_lag_p99_ms": 1000 * percentile(lags, 0.99),
        "gc_full_collections": len(pauses.full),
        "gc_full_pause_max_ms": 1000 * max(pauses.full, default=0.0),
        "poll_window_p50": percentile([float(w) for w in windows], 0.5),
        "poll_window_max": max(windows, default=0),
        "emulator_cpu_seconds": emulator_cpu,
        "emulator_cpu_share": emulator_cpu / wall,
    }


def poll_windows() -> list[int]:
    """The size of each poll scheduler's window now (none for a provider without one)."""
    try:
        from airflow_vibedream.waiting.loop_local import loop_local
    except ImportError:  # a provider from before the poll window (VIBEDREAM_BENCH_PREVIOUS)
        return []
    return [scheduler.window.size for scheduler in loop_local().schedulers.values()]


def sizes_of(workload: str) -> tuple[int, ...]:
    chosen = os.environ.get(f"VIBEDREAM_BENCH_SIZES_{workload}")
    return tuple(int(n) for n in chosen.split(",")) if chosen else SIZES


def kinds() -> tuple[str, ...]:
    """The kinds run: ours, the peer's, and ``previous`` (the provider at another checkout, e.g. the
    commit before a change: ``VIBEDREAM_BENCH_PREVIOUS=/path/to/checkout``)."""
    return (*KINDS, "previous") if os.environ.get("VIBEDREAM_BENCH_PREVIOUS") else KINDS


def run_child(kind: str, count: int, workload: str, work: Path) -> dict[str, Any]:
    from airflow_vibedream.emulator.process import EmulatorProcess
    from tests.conftest import connection_json

    with EmulatorProcess(
        "--api-key", KEY, *WORKLOADS[workload][1], "--synthetic-outputs", log_path=work / "emulator.log"
    ) as emulator:
        env = child_env(AIRFLOW_CONN_VIBEDREAM_DEFAULT=connection_json(emulator.base_url, api_key=KEY))
        child = ["-m", "benchmarks.triggers"]
        if kind == "previous":
            # That checkout's package, this checkout's benchmark: a directory holding only the
            # package, first on the path (the working directory would otherwise win).
            only = work / "previous-package"
            if not only.exists():
                only.mkdir()
                (only / "airflow_vibedream").symlink_to(
                    Path(os.environ["VIBEDREAM_BENCH_PREVIOUS"]).resolve() / "airflow_vibedream"
                )
            child = [
                "-c",
                f"import runpy, sys; sys.path.insert(0, {str(only)!r}); "
                "runpy.run_module('benchmarks.triggers', run_name='__main__')",
            ]
        out = work / f"{workload}-{kind}-{count}.json"
        subprocess.run(
            [
                sys.executable,
                *child,
                "--child",
                "provider" if kind == "previous" else kind,
                str(count),
                emulator.base_url,
                str(emulator.pid),
                str(out),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(work / f"{workload}-{kind}-{count}.log").open("w"),
            check=True,
        )
    result = dict(json.loads(out.read_text()), kind=kind, workload=workload)
    print(result, flush=True)
    return result


def allocations_per_poll(run: dict[str, Any]) -> float:
    """Container objects allocated per poll, from the collector's own count: a young collection runs
    each time allocations minus deallocations of tracked objects reach ``gc_threshold0`` (700).
    tracemalloc reports live memory, not how many blocks came and went, so this count is the one
    that says how often a poll makes the collector run (and, every tenth of tenths, walk Airflow)."""
    return float(run["young_collections_per_1000_polls"]) * int(run.get("gc_threshold0", 700)) / 1000


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def table_rows(results: list[dict[str, Any]], workload: str) -> list[str]:
    rows = []
    for count in sorted({r["triggers"] for r in results if r["workload"] == workload}):
        runs = {r["kind"]: r for r in results if r["workload"] == workload and r["triggers"] == count}
        ours, peer = runs["provider"], runs["peer"]
        for r in runs.values():
            rows.append(
                f"| {workload} | {count} | {r['kind']} | {r['finished']}/{count} "
                f"| {r['cpu_ms_per_prediction']:.2f} ms | {r['polls_per_prediction']:.1f} "
                f"| {r['kib_per_trigger']:.1f} KiB "
                f"| {r['detection_p50_s']:.2f} / {r['detection_p99_s']:.2f} / "
                f"{r['detection_p99_under_a_minute_s']:.2f} s "
                f"| {r['loop_lag_p99_ms']:.0f} ms | {r['full_collections_per_1000_polls']:.2f} "
                f"({r['gc_full_collections']}, longest {r['gc_full_pause_max_ms']:.0f} ms) "
                f"| {r['young_collections_per_1000_polls']:.0f} "
                f"(~{allocations_per_poll(r):.0f}) |"
            )
        ratio = ours["cpu_ms_per_prediction"] / peer["cpu_ms_per_prediction"]
        polls = ""
        if "previous" in runs:
            share = ours["polls_per_prediction"] / runs["previous"]["polls_per_prediction"]
            polls = f"{share:.2f}x previous ({verdict(share <= 0.5)})"
        detection = ours["detection_p99_under_a_minute_s"]
        rows.append(
            f"| {workload} | {count} | **goals** | | **{ratio:.2f}x** peer ({verdict(ratio <= 0.3)}) "
            f"| {polls} | {verdict(ours['kib_per_trigger'] <= 5)} | {verdict(detection <= 2)} "
            f"| {verdict(ours['loop_lag_p99_ms'] < 100)} | | |"
        )
    return rows


def main() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vibedream-bench-triggers-"))
    results: list[dict[str, Any]] = []
    for workload in SELECTED:
        for count in sizes_of(workload):
            for kind in kinds():
                results.append(run_child(kind, count, workload, work))
    table_text = table(results, SELECTED)
    name = os.environ.get("VIBEDREAM_BENCH_RESULT_NAME", "triggers")  # e.g. triggers_workload_b
    write_result(name, {"runs": results, "machine": machine()}, table_text)
    return {"runs": results}


def table(results: list[dict[str, Any]], workloads: tuple[str, ...]) -> str:
    """The results table (``--render results/<name>.json`` rewrites a stored result's table)."""
    rows = [row for workload in workloads for row in table_rows(results, workload)]
    described = "; ".join(f"{name}: {WORKLOADS[name][0]}" for name in workloads)
    return "\n".join(
        [
            f"Concurrent prediction triggers in one event loop ({described}; peer: aiohttp, new session "
            "per poll, 1 s; previous: the provider before the poll scheduler)",
            "",
            "| workload | triggers | trigger | finished | CPU per prediction (goal <= 0.3x peer) "
            "| polls per prediction (goal <= 0.5x previous) | RSS per trigger (goal <= 5 KiB) "
            "| detection p50 / p99 / p99 of jobs < 1 min (goal <= 2 s) | loop lag p99 (goal < 100 ms) "
            "| full GCs per 1000 polls (count, longest) "
            "| young GCs per 1000 polls (~objects allocated per poll) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def render(stored: Path) -> None:
    """Rewrite the table of a stored result from its figures (after a change of the table's form)."""
    runs = json.loads(stored.read_text())["runs"]
    workloads = tuple(dict.fromkeys(run["workload"] for run in runs))
    stored.with_suffix(".md").write_text(table(runs, workloads) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--render":
        render(Path(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, count, base_url, pid, out = sys.argv[2:7]
        result = asyncio.run(measure(kind, int(count), base_url, int(pid)))
        Path(out).write_text(json.dumps(result))
    else:
        main()
