"""The emulator's predictions: what the API would hold server-side, and the work that completes them."""

from __future__ import annotations

import asyncio
import base64
import functools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from airflow_vibedream.emulator.contract import (
    PREDICTION_ROUTE,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_PROCESSING,
    UPSCALER_MODEL_ID,
    UPSCALER_MODEL_NAME,
)
from airflow_vibedream.emulator.faults import FaultInjector, FaultRule
from airflow_vibedream.emulator.imaging import ENCODERS, MEDIA_TYPES, InputImageError, upscale_to_file

#: Largest input the emulator downloads; the real service has a limit too, and an unbounded read
#: would let one bad URL exhaust the emulator's memory.
MAX_INPUT_BYTES = 64 * 1024 * 1024


#: Input fetch failures that say the connection failed or dropped, not that the input is bad or slow.
_DROPPED = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.RemoteProtocolError,
)


@dataclass
class EmulatorConfig:
    """How the emulator behaves.

    :param api_key: the only bearer token it accepts.
    :param processing_seconds: how long a prediction stays ``processing`` at least.
    :param processing_seconds_max: if set, each prediction's time is drawn uniformly between
        ``processing_seconds`` and this (a realistic mix of short and long jobs).
    :param tail_share: the share of jobs that take a long time instead (a workload with a tail).
    :param tail_seconds: those jobs' time is drawn uniformly between ``tail_seconds`` and
        ``tail_seconds_max``.
    :param tail_seconds_max: see ``tail_seconds``.
    :param synthetic_outputs: skip downloading and resampling; outputs are placeholder URLs.
        For load tests of the API surface only (thousands of predictions on two cores).
    :param cost_cents: the ``costCents`` of one run (the vendor page: "from $0.02/run").
    :param assets_base_url: base of the output download URLs; default: the emulator's own URL.
        Give another host name (``http://localhost:PORT`` when the API is ``http://127.0.0.1:PORT``)
        to check that clients do not send the API key to the outputs host.
    :param data_dir: where output files are written; default: a temporary directory.
    :param sync_wait_seconds: the longest a sync-mode submit waits for its result.
    :param fetch_timeout: timeout for downloading an input image.
    :param png_compress_level: zlib level of PNG outputs (0 = stored: an 8K PNG of ~100 MB).
    :param faults: fault rules active from the start (see :mod:`airflow_vibedream.emulator.faults`).
    """

    api_key: str = "emulator-key"
    processing_seconds: float = 2.0
    processing_seconds_max: float | None = None
    tail_share: float = 0.0
    tail_seconds: float = 300.0
    tail_seconds_max: float = 600.0
    synthetic_outputs: bool = False
    cost_cents: int = 2
    assets_base_url: str | None = None
    data_dir: Path | None = None
    sync_wait_seconds: float = 60.0
    fetch_timeout: float = 30.0
    png_compress_level: int = 1
    faults: list[FaultRule] = field(default_factory=list)


def iso_now() -> str:
    """ISO 8601 in UTC with milliseconds and ``Z``, as the API writes timestamps."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class EmulatedPrediction:
    id: str
    model_id: str
    request: dict[str, Any]
    created_at: str
    created_monotonic: float
    status: str = STATUS_PROCESSING
    outputs: list[str] | None = None
    error: str | None = None
    completed_at: str | None = None
    forced_error: str | None = None  # a fail_prediction fault: ends failed with this text
    stuck: bool = False  # a stuck fault: never leaves processing
    processing_seconds: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def to_api(self) -> dict[str, Any]:
        """The poll answer, exactly the documented fields."""
        return {
            "id": self.id,
            "modelId": self.model_id,
            "modelName": UPSCALER_MODEL_NAME,
            "status": self.status,
            "outputs": self.outputs,
            "error": self.error,
            "createdAt": self.created_at,
            "completedAt": self.completed_at,
        }


class EmulatorState:
    """Predictions, output files and request counters of one emulator instance."""

    def __init__(self, config: EmulatorConfig, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.public_base_url = ""  # set once the server knows its address
        self.predictions: dict[str, EmulatedPrediction] = {}
        self.counters: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._fetcher: httpx.AsyncClient | None = None
        self.faults = FaultInjector(config.faults)

    @property
    def assets_base_url(self) -> str:
        return (self.config.assets_base_url or self.public_base_url).rstrip("/")

    def status_url(self, prediction_id: str) -> str:
        return self.public_base_url.rstrip("/") + PREDICTION_ROUTE.format(prediction_id=prediction_id)

    def _job_seconds(self) -> float:
        config = self.config
        if config.tail_share and random.random() < config.tail_share:
            return random.uniform(config.tail_seconds, max(config.tail_seconds, config.tail_seconds_max))
        return random.uniform(
            config.processing_seconds, max(config.processing_seconds, config.processing_seconds_max or 0.0)
        )

    def submit(self, model_id: str, request: dict[str, Any]) -> EmulatedPrediction:
        outcome = self.faults.pick("submit", kinds=("fail_prediction", "stuck"))
        prediction = EmulatedPrediction(
            id=str(uuid.uuid4()),
            model_id=model_id,
            request=request,
            created_at=iso_now(),
            created_monotonic=time.monotonic(),
            forced_error=outcome.error if outcome and outcome.kind == "fail_prediction" else None,
            processing_seconds=self._job_seconds(),
            stuck=bool(outcome and outcome.kind == "stuck"),
        )
        self.predictions[prediction.id] = prediction
        self.counters["accepted_submissions"] += 1
        task = asyncio.create_task(self._process(prediction))
        # Keep a reference: the event loop only holds weak ones, and a collected task never finishes.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return prediction

    def submit_answer(self, prediction: EmulatedPrediction) -> dict[str, Any]:
        """The documented answer to an asynchronous submit."""
        return {
            "id": prediction.id,
            "status": prediction.status,
            "statusUrl": self.status_url(prediction.id),
            "estimatedTime": "Fast & Efficient",
            "costCents": self.config.cost_cents,
            "createdAt": prediction.created_at,
        }

    def sync_answer(self, prediction: EmulatedPrediction) -> dict[str, Any]:
        """A sync-mode submit answers with the finished prediction, plus the submit fields."""
        return {
            **prediction.to_api(),
            "statusUrl": self.status_url(prediction.id),
            "costCents": self.config.cost_cents,
        }

    async def _process(self, prediction: EmulatedPrediction) -> None:
        if prediction.stuck:
            return  # stays processing until the emulator stops
        if prediction.forced_error is not None:
            await self._wait_processing_time(prediction)
            self._finish(prediction, STATUS_FAILED, error=prediction.forced_error)
            return
        try:
            outputs = await self._render(prediction)
        except InputImageError as exc:
            await self._wait_processing_time(prediction)
            self._finish(prediction, STATUS_FAILED, error=str(exc))
        except Exception as exc:  # the emulator must never leave a prediction processing forever
            await self._wait_processing_time(prediction)
            self._finish(prediction, STATUS_FAILED, error=f"Internal error while processing: {exc}")
        else:
            await self._wait_processing_time(prediction)
            self._finish(prediction, STATUS_COMPLETED, outputs=outputs)

    async def _wait_processing_time(self, prediction: EmulatedPrediction) -> None:
        remaining = prediction.processing_seconds - (time.monotonic() - prediction.created_monotonic)
        if remaining > 0:
            await asyncio.sleep(remaining)

    def _finish(
        self,
        prediction: EmulatedPrediction,
        status: str,
        *,
        outputs: list[str] | None = None,
        error: str | None = None,
    ) -> None:
        prediction.status = status
        prediction.outputs = outputs
        prediction.error = error
        prediction.completed_at = iso_now()
        self.counters[f"predictions_{status}"] += 1
        prediction.done.set()

    async def _render(self, prediction: EmulatedPrediction) -> list[str]:
        request = prediction.request
        if self.config.synthetic_outputs:
            return [f"{self.assets_base_url}/outputs/{prediction.id}/synthetic.{request['output_format']}"]
        data = await self._fetch_input(request["image"])
        _, extension = ENCODERS[request["output_format"]]
        name = f"{int(time.time() * 1000)}-0.{extension}"
        destination = self.data_dir / prediction.id / name
        # Resampling an 8K image takes seconds of CPU: off the event loop, so polls stay answered.
        await asyncio.to_thread(
            functools.partial(upscale_to_file, png_compress_level=self.config.png_compress_level),
            data,
            request["target_resolution"],
            request["output_format"],
            destination,
        )
        if request.get("enable_base64_output"):
            encoded = base64.b64encode(destination.read_bytes()).decode("ascii")
            return [f"data:{MEDIA_TYPES[extension]};base64,{encoded}"]
        return [f"{self.assets_base_url}/outputs/{prediction.id}/{name}"]

    async def _fetch_input(self, url: str) -> bytes:
        # A connection that fails or drops is tried again, as a hosted API's fetcher would: on a
        # loaded test machine one lost connection must not fail a job the client paid for. A slow
        # answer is not retried (a hostile input's drip would take three times as long).
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_DROPPED),
            stop=stop_after_attempt(3),
            wait=wait_fixed(0.5),
            reraise=True,
        )
        try:
            return await retrying(self._fetch_input_once, url)
        except httpx.HTTPError as exc:
            raise InputImageError(
                f"Failed to fetch the input image from {url}: {type(exc).__name__} {exc}".rstrip()
            ) from exc

    async def _fetch_input_once(self, url: str) -> bytes:
        if self._fetcher is None:
            self._fetcher = httpx.AsyncClient(timeout=self.config.fetch_timeout, follow_redirects=True)
        async with self._fetcher.stream("GET", url) as response:
            if response.status_code != 200:
                raise InputImageError(
                    f"Failed to fetch the input image from {url}: HTTP {response.status_code}"
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_INPUT_BYTES:
                    raise InputImageError(f"The input image at {url} is larger than {MAX_INPUT_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

    def output_file(self, prediction_id: str, name: str) -> Path | None:
        if prediction_id not in self.predictions or "/" in name or name.startswith("."):
            return None
        path = self.data_dir / prediction_id / name
        return path if path.is_file() else None

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._fetcher is not None:
            await self._fetcher.aclose()

    def stats(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "predictions": len(self.predictions),
            "processing": sum(1 for p in self.predictions.values() if p.status == STATUS_PROCESSING),
        }


def is_upscaler(model_id: str) -> bool:
    return model_id == UPSCALER_MODEL_ID
