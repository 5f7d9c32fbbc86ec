"""VibeDreamBatchUpscaleOperator: a whole folder of images in one task and one trigger."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, BaseOperator, conf

from airflow_vibedream.client import Prediction, UpscaleRequest, VibeDreamClient
from airflow_vibedream.client.request import validate_choice
from airflow_vibedream.constants import DEFAULT_POLL_INTERVAL, OUTPUT_FORMATS, TARGET_RESOLUTIONS
from airflow_vibedream.errors import VibeDreamError, VibeDreamValidationError
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.storage import (
    DEFAULT_OUTPUT_NAME,
    list_s3_images,
    persist_outputs,
    resolve_image,
    safe_segment,
    storage_uri,
    validate_image_source,
    write_text_atomically,
)
from airflow_vibedream.triggers.vibedream import EVENT_SUCCESS, VibeDreamBatchTrigger

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: task_state_store key of image ``i``'s submission: one key each, written as soon as it is
#: submitted, so a crash mid-batch loses no prediction id.
STATE_KEY = "vibedream_batch_{index}"

#: Below Airflow 3.3 (no task_state_store) the submissions cross the deferral in this XCom instead
#: (small: input, prediction id and cost per image). It lasts for the try, not beyond.
XCOM_SUBMISSIONS = "vibedream_batch_submissions"


class RateLimiter:
    """At most ``per_minute`` acquisitions a minute, evenly spaced; thread-safe. None: no limit."""

    def __init__(self, per_minute: float | None) -> None:
        self._spacing = 60.0 / per_minute if per_minute else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self._spacing:
            return
        with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self._spacing
        if wait > 0:
            time.sleep(wait)


class VibeDreamBatchUpscaleOperator(BaseOperator):
    """Upscales many images in one task: bounded, rate-limited submits, then one deferral to one
    trigger that polls them all, then a JSONL manifest next to the outputs.

    Returns a small summary: ``{"total", "completed", "failed", "total_cost_cents", "manifest"}``.
    Each manifest line: ``{"input", "prediction_id", "status", "outputs", "error", "cost_cents"}``.
    A retry reuses every prediction already submitted (kept in ``task_state_store``, Airflow 3.3+).

    :param images: image URLs / ``s3://`` objects (a list, or a templated XCom/JSON list).
    :param s3_prefix: instead of ``images``: every image object under this ``s3://bucket/prefix``.
    :param target_resolution: ``2k``, ``4k`` or ``8k``. Templated.
    :param output_format: ``jpeg``, ``png`` or ``webp``. Templated.
    :param output_path: where outputs and the manifest go (local directory or object-store URI).
    :param max_concurrency: submits (and downloads) in flight at once (the lowest tier allows 2).
    :param requests_per_minute: submit rate limit; None for no limit (lowest tier: about 2).
    :param fail_on_error: fail the task, after the manifest is written, if any image failed.
    :param vibedream_conn_id: the VibeDream connection.
    :param aws_conn_id: for ``s3://`` inputs, prefix listing and outputs.
    :param poll_interval: seconds between polling rounds.
    :param timeout: seconds (or timedelta) the whole batch may take after the submits.
    :param deferrable: wait in the triggerer.
    :param max_cost_cents: refuse, before any submit, a batch whose estimated cost is higher (cents;
        None: no limit). The estimate is the cost of predictions an earlier try already submitted,
        plus ``cost_cents_per_image`` for each image still to submit.
    :param cost_cents_per_image: the estimate's price of one image (the vendor: "from $0.02/run").
    :param progress_interval: seconds between ``done/total, failed`` lines in the task (or trigger) log.
    """

    template_fields: Sequence[str] = (
        "images",
        "s3_prefix",
        "target_resolution",
        "output_format",
        "output_path",
    )

    def __init__(
        self,
        *,
        target_resolution: str,
        output_format: str,
        output_path: str,
        images: list[str] | str | None = None,
        s3_prefix: str | None = None,
        max_concurrency: int = 4,
        requests_per_minute: float | None = None,
        fail_on_error: bool = True,
        vibedream_conn_id: str = VibeDreamHook.default_conn_name,
        aws_conn_id: str | None = "aws_default",
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: float | timedelta = timedelta(hours=2),
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_cost_cents: float | None = None,
        cost_cents_per_image: float = 2,
        progress_interval: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value, allow_none in (
            ("max_cost_cents", max_cost_cents, True),
            ("cost_cents_per_image", cost_cents_per_image, False),
        ):
            if value is None and allow_none:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise VibeDreamValidationError(
                    f"{name} must be a number of cents >= 0{' or None' if allow_none else ''}; got {value!r}",
                    field=name,
                )
        if (images is None) == (s3_prefix is None):
            raise VibeDreamValidationError("give exactly one of images or s3_prefix", field="images")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise VibeDreamValidationError(
                f"max_concurrency must be >= 1; got {max_concurrency!r}", field="max_concurrency"
            )
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise VibeDreamValidationError(
                f"requests_per_minute must be > 0 or None; got {requests_per_minute!r}",
                field="requests_per_minute",
            )
        self.images = images
        self.s3_prefix = s3_prefix
        self.target_resolution = target_resolution
        self.output_format = output_format
        self.output_path = output_path
        self.max_concurrency = max_concurrency
        self.requests_per_minute = requests_per_minute
        self.fail_on_error = fail_on_error
        self.vibedream_conn_id = vibedream_conn_id
        self.aws_conn_id = aws_conn_id
        self.poll_interval = float(poll_interval)
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        self.deferrable = deferrable
        self.max_cost_cents = max_cost_cents
        self.cost_cents_per_image = cost_cents_per_image
        self.progress_interval = float(progress_interval)

    @cached_property
    def hook(self) -> VibeDreamHook:
        return VibeDreamHook(vibedream_conn_id=self.vibedream_conn_id)

    # -- inputs ------------------------------------------------------------------------------------

    def image_list(self) -> list[str]:
        """The rendered images, validated one by one (the field name says which one is wrong)."""
        validate_choice("target_resolution", self.target_resolution, TARGET_RESOLUTIONS)
        validate_choice("output_format", self.output_format, OUTPUT_FORMATS)
        if self.s3_prefix is not None:
            return list_s3_images(self.s3_prefix, aws_conn_id=self.aws_conn_id)
        images = json.loads(self.images) if isinstance(self.images, str) else self.images
        if not isinstance(images, list):
            raise VibeDreamValidationError(
                f"images must be a list of image URLs; got {images!r}", field="images"
            )
        return [validate_image_source(f"images[{index}]", image) for index, image in enumerate(images)]

    # -- the task ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        images = self.image_list()  # every input checked before any request
        self.log.info("VibeDream batch of %d images", len(images))
        submitted = self._submit_all(context, self.hook.get_client(), images)
        ids = [entry["prediction_id"] for entry in submitted.values() if entry.get("prediction_id")]
        deadline = time.time() + self.timeout
        if self.deferrable and ids:
            if context.get("task_state_store") is None:  # type: ignore[attr-defined]
                context["ti"].xcom_push(
                    key=XCOM_SUBMISSIONS, value={str(index): entry for index, entry in submitted.items()}
                )
            self.defer(
                trigger=VibeDreamBatchTrigger(
                    prediction_ids=ids,
                    vibedream_conn_id=self.vibedream_conn_id,
                    poll_interval=self.poll_interval,
                    end_time=deadline,
                    max_concurrency=max(self.max_concurrency, 8),
                    progress_interval=self.progress_interval,
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout + 60),
            )
        return self._finish(context, images, submitted, pending=self._wait_in_worker(ids, deadline))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        images = self.image_list()
        submitted = self._stored(context, images)
        if event.get("status") not in (EVENT_SUCCESS, "timeout"):
            raise VibeDreamError(f"Waiting for the VibeDream batch failed: {event.get('message')}")
        return self._finish(context, images, submitted, pending=list(event.get("pending") or []))

    def _wait_in_worker(self, ids: list[str], deadline: float) -> list[str]:
        client = self.hook.get_client()
        outstanding = list(ids)
        failures = 0
        started = last_progress = time.monotonic()
        while outstanding and time.time() < deadline:
            with ThreadPoolExecutor(self.max_concurrency) as pool:
                answers = list(pool.map(client.get_prediction, outstanding))
            failures += sum(1 for answer in answers if answer.failed)
            outstanding = [answer.id for answer in answers if not answer.is_terminal]
            now = time.monotonic()
            if not outstanding or now - last_progress >= self.progress_interval:
                last_progress = now
                self.log.info(
                    "VibeDream batch: %d/%d done, %d failed, %.0fs elapsed",
                    len(ids) - len(outstanding),
                    len(ids),
                    failures,
                    now - started,
                )
            if outstanding:
                time.sleep(self.poll_interval)
        return outstanding

    # -- submits, resumable ------------------------------------------------------------------------

    def _stored(self, context: Context, images: list[str]) -> dict[int, dict[str, Any]]:
        store = context.get("task_state_store")  # type: ignore[attr-defined]
        found: dict[int, dict[str, Any]] = {}
        if store is None:
            # Airflow < 3.3: only what this try handed over its own deferral (see XCOM_SUBMISSIONS).
            ti = context["ti"]
            handed_over = ti.xcom_pull(task_ids=ti.task_id, key=XCOM_SUBMISSIONS, map_indexes=ti.map_index)
            for key, entry in (handed_over or {}).items():
                index = int(key)
                if index < len(images) and isinstance(entry, dict) and entry.get("input") == images[index]:
                    found[index] = entry
            return found
        for index, image in enumerate(images):
            entry = store.get(STATE_KEY.format(index=index))
            if isinstance(entry, dict) and entry.get("input") == image:
                found[index] = entry
        return found

    def _submit_all(
        self, context: Context, client: VibeDreamClient, images: list[str]
    ) -> dict[int, dict[str, Any]]:
        submitted = self._stored(context, images)
        if submitted:
            self.log.info("Reusing %d predictions submitted by an earlier try", len(submitted))
        self._check_budget(len(images), submitted)
        store = context.get("task_state_store")  # type: ignore[attr-defined]
        limiter = RateLimiter(self.requests_per_minute)
        expires = self.timeout * (int(self.retries or 0) + 1) + 3600

        def submit(image: str) -> Prediction:
            request = UpscaleRequest(
                image=resolve_image(image, aws_conn_id=self.aws_conn_id, expires_in=expires),
                target_resolution=self.target_resolution,
                output_format=self.output_format,
            )
            limiter.acquire()
            return client.upscale(request)

        todo = [index for index in range(len(images)) if index not in submitted]
        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="vibedream-submit") as pool:
            futures: dict[Future[Prediction], int] = {pool.submit(submit, images[i]): i for i in todo}
            for future in as_completed(futures):
                index = futures[future]
                try:
                    prediction = future.result()
                except VibeDreamError as exc:  # this image is lost, the batch goes on
                    submitted[index] = {"input": images[index], "prediction_id": None, "error": str(exc)}
                    continue
                entry: dict[str, Any] = {
                    "input": images[index],
                    "prediction_id": prediction.id,
                    "cost_cents": prediction.cost_cents,
                }
                submitted[index] = entry
                if store is not None:  # persisted from this thread, right after the submit returned
                    store.set(STATE_KEY.format(index=index), entry)
        return submitted

    def _check_budget(self, total: int, submitted: dict[int, dict[str, Any]]) -> None:
        """Refuse the batch, before any submit, when its estimated cost is over ``max_cost_cents``."""
        spent = sum(entry.get("cost_cents") or 0 for entry in submitted.values())
        to_submit = total - len(submitted)
        estimate = spent + to_submit * self.cost_cents_per_image
        self.log.info(
            "VibeDream batch cost estimate: %g cents (%d images to submit x %g cents, %g cents already "
            "spent by an earlier try)",
            estimate,
            to_submit,
            self.cost_cents_per_image,
            spent,
        )
        if self.max_cost_cents is not None and estimate > self.max_cost_cents:
            raise AirflowFailException(
                f"max_cost_cents: the batch would cost about {estimate:g} cents ({to_submit} images x "
                f"{self.cost_cents_per_image:g} cents + {spent:g} cents already spent), over "
                f"max_cost_cents={self.max_cost_cents:g}; nothing was submitted. Raise max_cost_cents or "
                "split the batch."
            )

    # -- results -----------------------------------------------------------------------------------

    def _finish(
        self, context: Context, images: list[str], submitted: dict[int, dict[str, Any]], pending: list[str]
    ) -> dict[str, Any]:
        client = self.hook.get_client()
        ti = context["ti"]
        names = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": ti.map_index}

        def line(index: int) -> dict[str, Any]:
            entry = submitted.get(index, {})
            prediction_id = entry.get("prediction_id")
            base = {
                "input": images[index],
                "prediction_id": prediction_id,
                "cost_cents": entry.get("cost_cents"),
            }
            if not prediction_id:
                return {**base, "status": "not_submitted", "outputs": None, "error": entry.get("error")}
            if prediction_id in pending:
                return {
                    **base,
                    "status": "timeout",
                    "outputs": None,
                    "error": "did not finish before the deadline",
                }
            try:
                prediction = client.get_prediction(prediction_id)
                if not prediction.succeeded:
                    return {**base, "status": prediction.status, "outputs": None, "error": prediction.error}
                stored = persist_outputs(
                    prediction.outputs or [],
                    self.output_path,
                    names={**names, "prediction_id": prediction_id},
                    output_format=self.output_format,
                    name_template=DEFAULT_OUTPUT_NAME,
                    conn_id=self.aws_conn_id,
                )
                return {**base, "status": "completed", "outputs": [s.uri for s in stored], "error": None}
            except VibeDreamError as exc:
                return {**base, "status": "failed", "outputs": None, "error": str(exc)}

        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="vibedream-download") as pool:
            lines = list(pool.map(line, range(len(images))))
        map_suffix = f"/map_{ti.map_index}" if ti.map_index is not None and ti.map_index >= 0 else ""
        manifest_uri = (
            f"{storage_uri(self.output_path).rstrip('/')}/{safe_segment(ti.dag_id)}/{safe_segment(ti.run_id)}/"
            f"{safe_segment(ti.task_id)}{map_suffix}/manifest.jsonl"
        )
        write_text_atomically(
            manifest_uri, "".join(json.dumps(item) + "\n" for item in lines), conn_id=self.aws_conn_id
        )
        completed = sum(1 for item in lines if item["status"] == "completed")
        summary = {
            "total": len(lines),
            "completed": completed,
            "failed": len(lines) - completed,
            "total_cost_cents": sum(item["cost_cents"] or 0 for item in lines),
            "manifest": manifest_uri,
        }
        self.log.info("VibeDream batch finished: %s", summary)
        if self.fail_on_error and summary["failed"]:
            raise AirflowException(
                f"{summary['failed']} of {summary['total']} images failed; see the manifest {manifest_uri}"
            )
        return summary
