"""Where a poll's CPU goes, layer by layer (issue 21: "measure where the time above the floor goes").

One process, one prediction that never finishes, polls one after another (so the emulator's own CPU
is not in the figures and the layers are compared on identical requests), blocks of 300 polls of
each layer interleaved, the median of the blocks:

- **floor**: a bare keep-alive aiohttp GET and a JSON parse;
- **client**: the provider's ``AsyncVibeDreamClient.get_prediction`` (the aiohttp hot path, the
  size cap, the answer's parse and error mapping);
- **patient poll**: the above through the outage gate and the wait's decisions
  (:func:`airflow_vibedream.waiting.gate.poll_client_async`), what the scheduler calls per poll;
- **scheduler alone**: the triggerer's poll scheduler and decision object with a client that answers
  at once without I/O (1,000 waits polled every 0.1 s): the cost the loop adds per poll.

``VIBEDREAM_BENCH_POLL_PATH_ROUNDS`` sets the rounds (default 8).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks.common import child_env, machine, write_result
from benchmarks.triggers import KEY, submit_all

ROUNDS = int(os.environ.get("VIBEDREAM_BENCH_POLL_PATH_ROUNDS", "8"))
BLOCK = 300


async def http_layers(base_url: str) -> dict[str, float]:
    import aiohttp

    from airflow_vibedream.hooks.vibedream import VibeDreamHook
    from airflow_vibedream.waiting.decisions import PredictionWait
    from airflow_vibedream.waiting.gate import poll_client_async

    prediction_id = (await submit_all(base_url, 1))[0][0]
    client = await VibeDreamHook().get_shared_async_client()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    url = f"{base_url}/api/v1/predictions/{prediction_id}"
    wait = PredictionWait(prediction_id, interval=1.0)

    async def floor() -> None:
        async with session.get(url, headers={"Authorization": f"Bearer {KEY}"}) as answer:
            await answer.json()

    async def provider_client() -> None:
        await client.get_prediction(prediction_id, retry=False)

    async def patient_poll() -> None:
        await poll_client_async(client, wait)

    layers = {"floor": floor, "client": provider_client, "patient poll": patient_poll}
    for poll in layers.values():  # connections open, code paths warm
        for _ in range(50):
            await poll()
    blocks: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(ROUNDS):
        for name, poll in layers.items():
            started = time.process_time()
            for _ in range(BLOCK):
                await poll()
            blocks[name].append((time.process_time() - started) / BLOCK * 1e6)
    await session.close()
    return {name: statistics.median(values) for name, values in blocks.items()}


class _InstantClient:
    """Answers every poll at once (no I/O): what is left is the scheduler's own cost."""

    def __init__(self) -> None:
        from airflow_vibedream.client.settings import RetryPolicy

        self.settings = SimpleNamespace(
            max_polls_in_flight=512, base_url="http://instant", retry=RetryPolicy()
        )
        self.polls = 0
        self.until = 0.0

    async def get(self) -> _InstantClient:
        return self

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass

    async def get_prediction(self, prediction_id: str, **_: Any) -> Any:
        from airflow_vibedream.client.models import Prediction

        self.polls += 1
        done = time.time() >= self.until
        return Prediction(id=prediction_id, status="completed" if done else "processing")


async def scheduler_alone(waits: int = 1000, seconds: float = 3.0) -> float:
    from airflow_vibedream.waiting.decisions import PredictionWait
    from airflow_vibedream.waiting.durations import DurationModel
    from airflow_vibedream.waiting.scheduler import PollScheduler

    client = _InstantClient()
    client.until = time.time() + seconds
    scheduler = PollScheduler(client.get)  # type: ignore[arg-type]
    durations = DurationModel()
    started = time.process_time()
    await asyncio.gather(
        *(
            scheduler.wait(PredictionWait(f"p{n}", interval=0.1, durations=durations, created_at=time.time()))
            for n in range(waits)
        )
    )
    return (time.process_time() - started) / client.polls * 1e6


def table(figures: dict[str, float]) -> str:
    floor = figures["floor"]
    rows = [
        f"| {name} | {value:.0f} us | {value / floor:.2f}x |"
        for name, value in figures.items()
        if name != "scheduler alone"
    ]
    return "\n".join(
        [
            "### Where a poll's CPU goes (sequential polls in one process, median of blocks)",
            "",
            "| layer | CPU per poll | vs the floor |",
            "|---|---|---|",
            *rows,
            f"| scheduler alone (no I/O) | {figures['scheduler alone']:.0f} us | "
            f"+{figures['scheduler alone'] / floor:.2f}x |",
            "",
            f"- the patient poll plus the scheduler: about "
            f"**{(figures['patient poll'] + figures['scheduler alone']) / floor:.2f}x** the floor",
        ]
    )


def main() -> dict[str, Any]:
    from airflow_vibedream.emulator.process import EmulatorProcess
    from tests.conftest import connection_json

    work = Path(tempfile.mkdtemp(prefix="vibedream-bench-poll-path-"))
    with EmulatorProcess(
        "--api-key",
        KEY,
        "--processing-seconds",
        "3600",
        "--synthetic-outputs",
        log_path=work / "emulator.log",
    ) as emulator:
        saved = dict(os.environ)
        os.environ.update(
            child_env(AIRFLOW_CONN_VIBEDREAM_DEFAULT=connection_json(emulator.base_url, api_key=KEY))
        )
        try:
            figures = asyncio.run(http_layers(emulator.base_url))
        finally:
            os.environ.clear()
            os.environ.update(saved)
    figures["scheduler alone"] = asyncio.run(scheduler_alone())
    write_result("poll_path", {"figures_us": figures, "machine": machine()}, table(figures))
    return figures


if __name__ == "__main__":
    main()
