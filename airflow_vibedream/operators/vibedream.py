"""Operators: validate, submit, persist the prediction id, defer (or wait), finish.

They stay thin: HTTP, retries and parsing live in :mod:`airflow_vibedream.client`, waiting in the
trigger, and output persistence in :mod:`airflow_vibedream.files.storage`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import astuple
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, conf

from airflow_vibedream.client.models import Prediction, iso_seconds
from airflow_vibedream.client.request import UpscaleRequest, validate_bool, validate_model_id
from airflow_vibedream.constants import (
    DEFAULT_POLL_INTERVAL,
    OUTPUT_FORMATS,
    TARGET_RESOLUTIONS,
    UPSCALER_MODEL_ID,
)
from airflow_vibedream.errors import VibeDreamPredictionFailedError, VibeDreamValidationError
from airflow_vibedream.files.downloads import DownloadPolicy
from airflow_vibedream.files.inputs import presign_seconds, resolve_image, validate_image_source
from airflow_vibedream.files.outputs import OutputTarget, download_policy, input_facts
from airflow_vibedream.files.sources import input_file_name
from airflow_vibedream.files.storage import DEFAULT_OUTPUT_NAME, validate_name_template
from airflow_vibedream.files.verify import Expectation, ImageFacts
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.jobs.fingerprint import JobSpec
from airflow_vibedream.jobs.identity import identity_of
from airflow_vibedream.jobs.ledger.documents import FAILED, Ledger, LedgerEntry
from airflow_vibedream.jobs.signing import RecordSigner, signer_for
from airflow_vibedream.jobs.single import LedgerUse, SingleJob
from airflow_vibedream.links import VibeDreamOutputLink
from airflow_vibedream.operators.lineage import input_image_of, lineage_for, output_asset
from airflow_vibedream.tasks.events import log_unavailable, prediction_from_event
from airflow_vibedream.tasks.records import RESULT_XCOM_KEY, image_record
from airflow_vibedream.tasks.rules import input_is_bad, permanent_errors_fail_the_task
from airflow_vibedream.tasks.settle import fire_not_before
from airflow_vibedream.tasks.validation import choice, is_templated, positive_seconds
from airflow_vibedream.triggers.vibedream import VibeDreamPredictionTrigger
from airflow_vibedream.waiting.blocking import wait_for_prediction

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: XCom key of the prediction id, pushed right after the submit.
XCOM_PREDICTION_ID = "prediction_id"
#: XCom key of the submit answer's cost: poll answers do not repeat it, and XCom (unlike defer
#: kwargs, which ``dag.test()`` drops) survives until the task finishes.
XCOM_COST_CENTS = "cost_cents"
#: XCom key of the input's (width, height, format), read from its header before the submit: the
#: outputs are verified against it when the try resumes after deferring.
XCOM_INPUT_FACTS = "vibedream_input_facts"
#: XCom key of this try's ledger entry key, for ``execute_complete`` (which writes the entry only
#: if it records this very prediction: an XCom value is not trusted to name another entry).
XCOM_LEDGER_KEY = "vibedream_ledger_key"


class VibeDreamGenerateOperator(BaseOperator):
    """Runs any VibeDream model and returns its prediction.

    The XCom return value is ``{"id", "model_id", "status", "outputs", "error", "created_at",
    "completed_at", "cost_cents"}``; ``outputs`` lists the stored URIs when ``output_path`` is set
    (details per file under ``"files"``), else the API's temporary download URLs. The prediction id is
    pushed under XCom key ``prediction_id`` as soon as the job is submitted.

    :param model_id: the model, e.g. ``image-upscaler``. Templated.
    :param input: the model's input parameters (JSON object). Templated.
    :param output_path: where to store the outputs: a local directory, ``file://`` or ``s3://...``
        (any ObjectStoragePath). None keeps the API's download URLs. Templated.
    :param output_name_template: name of each stored output relative to ``output_path``; fields
        ``dag_id``, ``run_id``, ``task_id``, ``map_suffix``, ``prediction_id``, ``index``, ``ext``.
    :param vibedream_conn_id: the Airflow connection of type ``vibedream``.
    :param poll_interval: seconds between status polls (the API suggests 1-2).
    :param timeout: the longest the prediction may take, seconds or timedelta; one wall-clock
        deadline from the submit, for the worker and the trigger alike.
    :param deferrable: wait in the triggerer (no worker slot held). Default: ``[operators]
        default_deferrable``.
    :param durable: remember the submitted prediction in ``task_state_store`` (Airflow 3.3+) so that
        a retry reconnects to it (waits if it still runs, finishes if it completed, submits anew only
        if it failed) instead of paying for a second job.
    :param aws_conn_id: the AWS connection for ``s3://`` inputs (presigned) and ``s3://`` outputs.
    :param output_conn_id: the connection of ``output_path``'s store, if not ``aws_conn_id``.
    :param reuse_outputs: with ``output_path`` and an ``image`` input: an image already upscaled
        from the same bytes with the same request (by any task, run or DAG writing to the same
        ``output_path``), whose stored outputs are intact, is not submitted again; the result says
        ``"reused": True`` and costs 0 (see the ledger in the docs). False: a deliberate re-run pays.
    :param resubmit_unknown: submit again an image whose earlier submit's outcome is unknown (it
        may exist and be billed); by default such an image fails the task and is never resent.
    :param retry_failed: submit again an input the ledger knows to be bad (its job failed because its
        bytes cannot be decoded); by default such an input fails the task at once, unpaid, saying why.
    """

    template_fields: Sequence[str] = ("model_id", "input", "output_path", "vibedream_conn_id")
    template_fields_renderers = {"input": "json"}
    ui_color = "#f3e8ff"
    operator_extra_links = (VibeDreamOutputLink(),)

    def __init__(
        self,
        *,
        model_id: str,
        input: dict[str, Any],
        output_path: str | None = None,
        output_name_template: str = DEFAULT_OUTPUT_NAME,
        vibedream_conn_id: str = VibeDreamHook.default_conn_name,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: float | timedelta = timedelta(minutes=30),
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        durable: bool = True,
        aws_conn_id: str | None = "aws_default",
        output_conn_id: str | None = None,
        reuse_outputs: bool = True,
        resubmit_unknown: bool = False,
        retry_failed: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.durable = durable
        self.reuse_outputs = validate_bool("reuse_outputs", reuse_outputs)
        self.resubmit_unknown = validate_bool("resubmit_unknown", resubmit_unknown)
        self.retry_failed = validate_bool("retry_failed", retry_failed)
        self._ledger_entry: LedgerEntry | None = None
        self.aws_conn_id = aws_conn_id
        self.output_conn_id = output_conn_id
        self._lineage: tuple[str | None, list[str], list[dict[str, Any]]] = (None, [], [])
        self._input_facts: ImageFacts | None = None
        if output_path and not is_templated(output_path):
            # A fixed destination is a data product: declare it, so asset-aware DAGs can follow it.
            self.outlets = [*self.outlets, output_asset(output_path)]
        self.model_id = model_id
        self.input = input
        self.output_path = output_path
        self.output_name_template = validate_name_template(output_name_template)
        self.vibedream_conn_id = vibedream_conn_id
        self.poll_interval = positive_seconds(poll_interval, "poll_interval")
        self.timeout = positive_seconds(timeout, "timeout")
        self.deferrable = deferrable
        if not is_templated(model_id):
            validate_model_id(model_id)

    @cached_property
    def hook(self) -> VibeDreamHook:
        return VibeDreamHook(vibedream_conn_id=self.vibedream_conn_id)

    # -- what to submit ---------------------------------------------------------------------------

    def job_spec(self) -> JobSpec:
        """What this try asks for, validated (after templates were rendered), as the user named it."""
        if not isinstance(self.input, Mapping):
            raise VibeDreamValidationError(
                f"input must be a JSON object of the model's parameters; got {self.input!r}", field="input"
            )
        return JobSpec(validate_model_id(self.model_id), dict(self.input))

    def payload(self, spec: JobSpec) -> dict[str, Any]:
        """The JSON body actually sent (built only when submitting)."""
        return dict(spec.asked)

    def requested_output_format(self) -> str | None:
        """The ``output_format`` input, if any: it names the stored files' extension."""
        value = self.input.get("output_format") if isinstance(self.input, Mapping) else None
        return value if isinstance(value, str) else None

    def ledger_use(self, spec: JobSpec) -> LedgerUse | None:
        """The ledger beside ``output_path``, for an ask with an ``image`` (whose bytes identify it)."""
        image = spec.asked.get("image")
        if not self.output_path or not isinstance(image, str):
            self.log.info(
                "VibeDream ledger not used (%s): a new run of this task pays again for the same input",
                "no output_path" if not self.output_path else "the input has no image",
            )
            return None
        return LedgerUse(
            Ledger(self.output_path, self.output_conn_id or self.aws_conn_id, self._signer()),
            identity=lambda: identity_of(
                image, aws_conn_id=self.aws_conn_id, policy=download_policy(self.hook.get_client().settings)
            ),
            reuse=self.reuse_outputs,
            resubmit_unknown=self.resubmit_unknown,
            retry_failed=self.retry_failed,
        )

    def _signer(self) -> RecordSigner:
        """Signs this deployment's records (see :mod:`airflow_vibedream.jobs.signing`)."""
        return signer_for(self.hook.get_client().settings.api_key)

    # -- the task ---------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        with permanent_errors_fail_the_task():
            spec = self.job_spec()  # every rendered value checked before any request
            client = self.hook.get_client()
            job = SingleJob(
                context,
                self.log,
                durable=self.durable,
                signer=self._signer(),
                ledger=self.ledger_use(spec),
                resubmit_unknown=self.resubmit_unknown,
            )
            started = job.start(client, spec, lambda: self.payload(spec), wait_at_most=self.timeout)
            if isinstance(started, LedgerEntry):
                return self._reused(context, spec, started)
            prediction = started
            self._ledger_entry = job.entry
            if job.entry is not None:
                context["ti"].xcom_push(key=XCOM_LEDGER_KEY, value=job.entry.key)
            # XCom is cleared at each try; push again so downstream tasks and execute_complete see it.
            context["ti"].xcom_push(key=XCOM_PREDICTION_ID, value=prediction.id)
            context["ti"].xcom_push(key=XCOM_COST_CENTS, value=prediction.cost_cents)
            if self._input_facts is not None:
                context["ti"].xcom_push(key=XCOM_INPUT_FACTS, value=list(astuple(self._input_facts)))
            if prediction.is_terminal:  # sync mode's answer, or a prediction that completed meanwhile
                return self._finish(context, prediction)
            # One wall-clock deadline for this try, shared by the trigger and the worker loop.
            deadline = time.time() + self.timeout
            if self.deferrable:
                self.defer(
                    trigger=VibeDreamPredictionTrigger(
                        prediction_id=prediction.id,
                        vibedream_conn_id=self.vibedream_conn_id,
                        poll_interval=self.poll_interval,
                        end_time=deadline,
                        duration_kind=spec.duration_kind,
                        created_at=iso_seconds(prediction.created_at),
                        fire_not_before=fire_not_before(),
                        model_id=spec.model_id,
                        large_answers=spec.asked.get("enable_base64_output") is True,
                    ),
                    method_name="execute_complete",
                    # A backstop after the trigger's own timeout event: if no triggerer runs the trigger
                    # at all, Airflow fails the try and the retry reconnects to the stored prediction.
                    timeout=timedelta(seconds=self.timeout + 60),
                )
            waited = wait_for_prediction(
                client,
                prediction.id,
                poll_interval=self.poll_interval,
                deadline=deadline,
                kind=spec.duration_kind,
                created_at=iso_seconds(prediction.created_at),
                on_status_change=self._log_status_change,
                on_unavailable=lambda seconds, error: log_unavailable(self.log, seconds, error),
                reread=self.hook.reread_client,
                model_id=spec.model_id,
                large_answers=spec.asked.get("enable_base64_output") is True,
            )
            return self._finish(context, waited.with_cost(prediction.cost_cents))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger fired. Only a ``success`` event succeeds; any other raises the
        typed error it names, decided by the same permanent-error rule as in ``execute``."""
        with permanent_errors_fail_the_task():
            ti = context["ti"]
            cost_cents = ti.xcom_pull(task_ids=ti.task_id, key=XCOM_COST_CENTS, map_indexes=ti.map_index)
            try:
                prediction = prediction_from_event(
                    event, lambda pid: self.hook.get_client().get_prediction(pid)
                )
            except VibeDreamPredictionFailedError as exc:
                self._record_failed(context, exc.prediction_id, exc.api_message)
                raise
            return self._finish(context, prediction.with_cost(cost_cents))

    def _reused(self, context: Context, spec: JobSpec, entry: LedgerEntry) -> dict[str, Any]:
        """The result of an image the ledger says was already upscaled: its stored outputs, cost 0."""
        # The same file facts as a fresh result (pixel size and format as verified when stored), so a
        # downstream task reads a reused result the way it reads a paid one.
        facts = {"uri", "bytes", "sha256", "width", "height", "format"}
        files: list[dict[str, Any]] = [
            {**out.model_dump(include=facts), "reused": True} for out in entry.outputs
        ]
        result: dict[str, Any] = {
            "id": entry.prediction_id,
            "model_id": entry.model_id,
            "status": "completed",
            "outputs": [out.uri for out in entry.outputs],
            "error": None,
            "created_at": None,
            "completed_at": None,
            "cost_cents": 0,
            "files": files,
            "reused": True,
        }
        context["ti"].xcom_push(key=XCOM_PREDICTION_ID, value=entry.prediction_id)
        context["ti"].xcom_push(key=XCOM_COST_CENTS, value=0)
        self._lineage = (self.lineage_input(), list(result["outputs"]), files)
        context["ti"].xcom_push(
            key=RESULT_XCOM_KEY, value=image_record(prediction=result, asked=spec.asked, files=list(files))
        )
        return result

    def _own_entry(self, context: Context, prediction_id: str | None) -> tuple[Ledger, LedgerEntry] | None:
        """The ledger entry of this job (only the entry that records this very prediction: the key
        read back from XCom is checked, not trusted)."""
        entry = self._ledger_entry
        if not self.output_path:
            return None
        ledger = Ledger(self.output_path, self.output_conn_id or self.aws_conn_id, self._signer())
        if entry is None:  # resumed after deferring: this try's key, from XCom
            ti = context["ti"]
            key = ti.xcom_pull(task_ids=ti.task_id, key=XCOM_LEDGER_KEY, map_indexes=ti.map_index)
            if not (isinstance(key, str) and len(key) == 64):
                return None  # no ledger for this task (no image input, or it is turned off)
            entry = ledger.read(key)
        if entry is not None and prediction_id and entry.prediction_id == prediction_id:
            return ledger, entry
        return None

    def _record_completed(self, context: Context, prediction: Prediction, stored: list[Any]) -> None:
        """The ledger entry of this job, completed with its stored outputs."""
        if stored and (own := self._own_entry(context, prediction.id)) is not None:
            ledger, entry = own
            ledger.write(ledger.completed(entry, stored))

    def _record_failed(self, context: Context, prediction_id: str | None, error: str | None) -> None:
        """A job that failed because of its input's bytes: the input is known bad in the ledger, so a
        later run does not pay for the same failure again (``retry_failed=True`` does)."""
        if input_is_bad(error) and (own := self._own_entry(context, prediction_id)) is not None:
            ledger, entry = own
            ledger.write(entry.moved_to(FAILED, reason=(error or "")[:2000]))
            self.log.info(
                "VibeDream: %s is recorded as a known-bad input; later runs skip it at no cost", entry.input
            )

    def _finish(self, context: Context, prediction: Prediction) -> dict[str, Any]:
        if not prediction.succeeded:
            self._record_failed(context, prediction.id, prediction.error)
            raise VibeDreamPredictionFailedError.of(prediction.id, prediction.error)
        result = prediction.to_result()
        self.log.info(
            "VibeDream prediction %s completed (cost %s cents)", prediction.id, prediction.cost_cents
        )
        if self.output_path and prediction.outputs:
            target = OutputTarget(
                self.output_path, self.output_name_template, self.output_conn_id or self.aws_conn_id
            )
            policy = download_policy(self.hook.get_client().settings)
            expectation = self.output_expectation(context, policy)
            image = self.input.get("image") if isinstance(self.input, Mapping) else None
            stored = target.store(
                prediction,
                context["ti"],
                self.requested_output_format(),
                policy,
                expectation,
                input_name=input_file_name(image) if isinstance(image, str) else None,
            )
            for item in stored:
                self.log.info(
                    "Stored %s (%d bytes, %sx%s %s)",
                    item.uri,
                    item.bytes,
                    item.width,
                    item.height,
                    item.format,
                )
            result["outputs"] = [item.uri for item in stored]
            result["files"] = [item.to_dict() for item in stored]
            self._record_completed(context, prediction, stored)
        self._lineage = (self.lineage_input(), list(result["outputs"] or []), list(result.get("files") or []))
        # For the gallery and the "VibeDream output" link: small, and never the presigned input.
        context["ti"].xcom_push(
            key=RESULT_XCOM_KEY,
            value=image_record(
                prediction=result,
                asked=self.job_spec().asked,
                files=result.get("files"),
            ),
        )
        return result

    def output_expectation(self, context: Context, policy: DownloadPolicy) -> Expectation | None:
        """What every output must be. Any model's outputs are described, not judged; the upscaler
        overrides this with its format, long edge and aspect ratio."""
        return None

    def lineage_input(self) -> str | None:
        """The input image as the user named it (never a presigned URL), for lineage."""
        return input_image_of(self.input)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the input image and the stored outputs (or download URLs) as datasets."""
        return lineage_for(*self._lineage)

    def _log_status_change(self, prediction: Prediction, elapsed: float) -> None:
        self.log.info("VibeDream prediction %s is %s after %.1fs", prediction.id, prediction.status, elapsed)


class VibeDreamUpscaleImageOperator(VibeDreamGenerateOperator):
    """Upscales one image with VibeDream's ``image-upscaler`` model.

    Every input is checked before any request: at DAG parse time when it is a plain value, right
    after rendering when it is templated. The result is that of :class:`VibeDreamGenerateOperator`.

    :param image: http(s) URL of the image (JPEG, PNG, GIF or WebP), or ``s3://bucket/key``, which
        is presigned with ``aws_conn_id`` for long enough to cover the job and its retries. Templated.
    :param target_resolution: ``2k``, ``4k`` or ``8k`` (long edge 2048, 3840 or 7680 px). Templated.
    :param output_format: ``jpeg``, ``png`` or ``webp``. Templated.
    :param enable_base64_output: have the API return base64 text instead of a URL; needs
        ``output_path``, because image data never goes through XCom.
    :param enable_sync_mode: have the API answer the submit only when the image is ready.
    :param output_path: see :class:`VibeDreamGenerateOperator`.
    :param vibedream_conn_id: see :class:`VibeDreamGenerateOperator`.
    :param poll_interval: see :class:`VibeDreamGenerateOperator`.
    :param timeout: see :class:`VibeDreamGenerateOperator`.
    :param deferrable: see :class:`VibeDreamGenerateOperator`.
    """

    template_fields: Sequence[str] = (
        "image",
        "target_resolution",
        "output_format",
        "output_path",
        "vibedream_conn_id",
    )

    def __init__(
        self,
        *,
        image: str,
        target_resolution: str,
        output_format: str,
        enable_base64_output: bool = False,
        enable_sync_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_id=UPSCALER_MODEL_ID, input={}, **kwargs)
        self.image = image
        self.target_resolution = target_resolution
        self.output_format = output_format
        self.enable_base64_output = validate_bool("enable_base64_output", enable_base64_output)
        self.enable_sync_mode = validate_bool("enable_sync_mode", enable_sync_mode)
        if enable_base64_output and not kwargs.get("output_path"):
            raise VibeDreamValidationError(
                "enable_base64_output=True needs output_path: base64 images are decoded to storage, "
                "never passed through XCom",
                field="output_path",
            )
        self._validate_inputs(only_plain_values=True)  # fail at parse time, before any task runs

    def _validate_inputs(self, *, only_plain_values: bool = False) -> None:
        if not (only_plain_values and is_templated(self.image)):
            validate_image_source("image", self.image)
        choice(
            "target_resolution",
            self.target_resolution,
            TARGET_RESOLUTIONS,
            unless_templated=only_plain_values,
        )
        choice("output_format", self.output_format, OUTPUT_FORMATS, unless_templated=only_plain_values)

    def job_spec(self) -> JobSpec:
        self._validate_inputs()
        # The image as the user named it: an s3:// reference, never the presigned URL (which differs
        # on every try and says nothing about which image it is).
        return JobSpec(
            UPSCALER_MODEL_ID,
            {
                "image": validate_image_source("image", self.image),
                "target_resolution": self.target_resolution,
                "output_format": self.output_format,
                "enable_base64_output": self.enable_base64_output,
                "enable_sync_mode": self.enable_sync_mode,
            },
        )

    def payload(self, spec: JobSpec) -> dict[str, Any]:
        # Before anything is paid: an input the API would not accept is refused here, naming the
        # field, and the input's size is kept to verify the outputs' aspect ratio.
        self._input_facts = input_facts(
            spec.asked["image"],
            aws_conn_id=self.aws_conn_id,
            policy=download_policy(self.hook.get_client().settings),
        )
        image = resolve_image(
            spec.asked["image"],
            aws_conn_id=self.aws_conn_id,
            expires_in=presign_seconds(self.timeout, self.retries),
        )
        return UpscaleRequest(**{**spec.asked, "image": image}).to_payload()

    def output_expectation(self, context: Context, policy: DownloadPolicy) -> Expectation | None:
        return Expectation.for_upscale(
            self.target_resolution, self.output_format, self._known_input_facts(context, policy)
        )

    def _known_input_facts(self, context: Context, policy: DownloadPolicy) -> ImageFacts | None:
        """The input's facts: read before this try's submit (kept across the deferral), else read
        now (a retry that reconnected); None when the input cannot be read any more (the aspect
        ratio is then not checked, and the stored files' ``checks`` say so)."""
        if self._input_facts is not None:
            return self._input_facts
        ti = context["ti"]
        kept = ti.xcom_pull(task_ids=ti.task_id, key=XCOM_INPUT_FACTS, map_indexes=ti.map_index)
        if isinstance(kept, list) and len(kept) == 3:
            return ImageFacts(int(kept[0]), int(kept[1]), str(kept[2]))
        try:
            return input_facts(self.image, aws_conn_id=self.aws_conn_id, policy=policy)
        except VibeDreamValidationError as exc:
            self.log.warning("The outputs' aspect ratio is not checked: %s", exc)
            return None

    def lineage_input(self) -> str | None:
        return self.image

    def requested_output_format(self) -> str | None:
        return self.output_format
