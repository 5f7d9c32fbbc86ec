"""VibeDreamBatchUpscaleOperator: a whole folder of images in one task and one trigger."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, conf

from airflow_vibedream.client.request import UpscaleRequest, validate_bool
from airflow_vibedream.client.sync import VibeDreamClient
from airflow_vibedream.constants import (
    DEFAULT_POLL_INTERVAL,
    OUTPUT_FORMATS,
    TARGET_RESOLUTIONS,
    UPSCALER_MODEL_ID,
)
from airflow_vibedream.errors import (
    VibeDreamValidationError,
)
from airflow_vibedream.files.downloads import DownloadPolicy
from airflow_vibedream.files.inputs import presign_seconds, resolve_image, validate_image_source
from airflow_vibedream.files.outputs import OutputTarget, download_policy, input_facts
from airflow_vibedream.files.resize import is_larger_than_target, resized_data_uri
from airflow_vibedream.files.sources import (
    DEFAULT_INCLUDE,
    LAYOUT_DATASET,
    LAYOUT_PER_RUN,
    LAYOUTS,
    Staging,
    dataset_names,
    input_file_name,
    list_source,
    needs_staging,
    read_image_bytes,
    sha256_of,
    staging_folder,
)
from airflow_vibedream.files.storage import (
    DEFAULT_OUTPUT_NAME,
    StoredOutput,
    output_extension,
    validate_name_template,
    write_text_atomically,
)
from airflow_vibedream.files.verify import Expectation, ImageFacts
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.jobs.batch import BatchImage, BatchSubmitter, SubmitResult
from airflow_vibedream.jobs.budget import check_budget
from airflow_vibedream.jobs.fingerprint import JobSpec
from airflow_vibedream.jobs.identity import ContentIdentity, identity_of, s3_identity
from airflow_vibedream.jobs.ledger.batch import BatchLedger
from airflow_vibedream.jobs.ledger.documents import LOOKUP_THREADS, Ledger, LedgerEntry, TaskRef
from airflow_vibedream.jobs.signing import RecordSigner, signer_for
from airflow_vibedream.jobs.submissions import (
    LOCAL,
    REFUSED,
    SKIPPED,
    UNKNOWN,
    SubmissionRecord,
    SubmissionStore,
)
from airflow_vibedream.links import VibeDreamGalleryLink, VibeDreamManifestLink
from airflow_vibedream.tasks.batch_finish import (
    ImageLines,
    complete_in_ledger,
    fail_for,
    say_reasons,
    summary_of,
)
from airflow_vibedream.tasks.batch_wait import WorkerWait, wait_for_batch_in_worker
from airflow_vibedream.tasks.dataset import PRESENT, metadata_line, relative_name, write_metadata
from airflow_vibedream.tasks.events import (
    EVENT_SUCCESS,
    EVENT_TIMEOUT,
    error_from_event,
)
from airflow_vibedream.tasks.manifest import (
    STATUS_UNKNOWN,
    manifest_uri,
)
from airflow_vibedream.tasks.records import PROGRESS_XCOM_KEY, BatchProgress
from airflow_vibedream.tasks.rules import permanent_errors_fail_the_task
from airflow_vibedream.tasks.settle import fire_not_before
from airflow_vibedream.tasks.validation import choice, non_negative, positive_seconds, positive_whole
from airflow_vibedream.triggers.vibedream import VibeDreamBatchTrigger
from airflow_vibedream.waiting.decisions import FAILED, PENDING

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: Below Airflow 3.3 (no task_state_store) the records cross the deferral in this XCom instead
#: (small: fingerprint, input, prediction id and cost per image). It lasts for the try, not beyond.
XCOM_SUBMISSIONS = "vibedream_batch_submissions"


class VibeDreamBatchUpscaleOperator(BaseOperator):
    """Upscales many images in one task: bounded, rate-limited submits, then one deferral to one
    trigger that polls them all, then a JSONL manifest next to the outputs.

    Returns a small summary: ``{"total", "completed", "reused", "failed", "skipped", "unknown",
    "total_cost_cents", "manifest"}`` (``total_cost_cents``: what the API billed for every job this
    task instance made, in any try). Each manifest line: ``{"input", "prediction_id", "status",
    "outputs", "error", "cost_cents"}``. Pay once per image, ever: the ledger beside the outputs
    (``<output_path>/_vibedream_ledger/``) records an intent before each submit and every id as it
    returns; an image already upscaled from the same bytes with the same resolution and format (by
    any run, task or DAG writing to the same ``output_path``) whose stored outputs are intact is not
    submitted: its line says ``reused`` and costs 0. Every prediction id is also recorded in
    ``task_state_store`` (Airflow 3.3+), keyed by the fingerprint of its request: a retry or a clear
    reuses each image's own job (never another image's). An image whose submit outcome is unknown
    (an answer lost after sending, a task killed mid-submit) is never resubmitted automatically: it
    is listed as ``submission_state_unknown`` in the manifest and in the task's error. An input whose
    bytes fail for good (refused, or its job failed as undecodable) is recorded in the ledger: later
    runs skip it at no cost, saying why (``skipped``), and a batch whose only failures are final ends
    without Airflow retries.

    :param source: the images: a list (URLs, ``s3://`` objects, local files), a local folder (or
        ``file://`` URI), an ``s3://`` prefix or any other prefix ``ObjectStoragePath`` reads; a folder
        or prefix is walked recursively (``include`` picks the files) and each image keeps its path
        relative to it. Images the API cannot fetch (local files, other stores) are staged under
        ``staging_path``. Templated.
    :param include: file name patterns a folder or prefix walk picks (``fnmatch``, any letter case;
        a pattern with ``/`` matches the relative path). Default: the API's formats' extensions.
    :param staging_path: an ``s3://bucket/prefix`` where images the API cannot fetch are copied for
        the length of their jobs (a folder per task instance, deleted when the batch ends; a later
        try deletes what an earlier one left), written with ``aws_conn_id`` and presigned.
    :param output_layout: ``per_run`` (``output_name_template``, by default a folder per run) or
        ``dataset``: each output at ``<output_path>/<the input's relative path, extension
        replaced>``, the same for every run, with ``metadata.jsonl`` (Hugging Face ImageFolder) at
        ``output_path`` listing the images present, so ``output_path`` is the training set.
    :param images: the same as a list ``source`` (kept for existing DAGs).
    :param s3_prefix: the same as an ``s3://`` ``source`` (kept for existing DAGs).
    :param target_resolution: ``2k``, ``4k`` or ``8k``. Templated.
    :param output_format: ``jpeg``, ``png`` or ``webp``. Templated.
    :param output_path: where outputs and the manifest go (local directory or object-store URI).
    :param output_name_template: each output's name relative to ``output_path`` (as for the
        single-image operators).
    :param output_conn_id: the connection of ``output_path``'s store, if not ``aws_conn_id``.
    :param max_concurrency: submits, downloads and (waiting in the worker) polls in flight at once (the
        lowest tier allows 2).
    :param requests_per_minute: submit rate limit; None for no limit (lowest tier: about 2).
    :param fail_on_error: fail the task, after the manifest is written, if any image failed.
    :param vibedream_conn_id: the VibeDream connection.
    :param aws_conn_id: for ``s3://`` inputs, prefix listing and (by default) outputs.
    :param poll_interval: seconds between polls of each prediction where jobs of its kind finish (per
        image on the learned schedule, in the triggerer and in the worker alike).
    :param timeout: seconds (or timedelta) the whole batch may take after the submits.
    :param deferrable: wait in the triggerer.
    :param max_cost_cents: refuse, before any submit, a batch whose estimated cost is higher (cents;
        None: no limit). The estimate is the cost of predictions an earlier try already submitted,
        plus ``cost_cents_per_image`` for each image still to submit.
    :param cost_cents_per_image: the estimate's price of one image (the vendor: "from $0.02/run").
    :param progress_interval: seconds between ``done/total, failed`` lines in the task (or trigger) log.
    :param reuse_outputs: reuse images the ledger says are done (False: a deliberate re-run pays).
    :param resubmit_unknown: submit again images whose earlier submit's outcome is unknown (they may
        exist and be billed); by default they are listed, never resent.
    :param retry_failed: submit again inputs the ledger knows to be bad (their bytes were refused or
        their job failed as undecodable); by default they are skipped at no cost, with the reason.
    :param upscale_larger_inputs: send inputs already at or above the target's long edge to the API
        too (which would only shrink them, at the price of a job); by default they are resized
        locally (Pillow, the asked format), stored and verified like the others (``resized_locally``,
        cost 0).
    """

    template_fields: Sequence[str] = (
        "source",
        "staging_path",
        "images",
        "s3_prefix",
        "target_resolution",
        "output_format",
        "output_path",
    )
    operator_extra_links = (VibeDreamManifestLink(), VibeDreamGalleryLink())

    def __init__(
        self,
        *,
        target_resolution: str,
        output_format: str,
        output_path: str,
        source: list[str] | str | None = None,
        include: Sequence[str] = DEFAULT_INCLUDE,
        staging_path: str | None = None,
        output_layout: str = LAYOUT_PER_RUN,
        images: list[str] | str | None = None,
        s3_prefix: str | None = None,
        output_name_template: str = DEFAULT_OUTPUT_NAME,
        output_conn_id: str | None = None,
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
        reuse_outputs: bool = True,
        resubmit_unknown: bool = False,
        retry_failed: bool = False,
        upscale_larger_inputs: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reuse_outputs = validate_bool("reuse_outputs", reuse_outputs)
        self.resubmit_unknown = validate_bool("resubmit_unknown", resubmit_unknown)
        self.retry_failed = validate_bool("retry_failed", retry_failed)
        self.upscale_larger_inputs = validate_bool("upscale_larger_inputs", upscale_larger_inputs)
        # Checked here, at parse time, the same way as every other operator's parameters.
        non_negative(max_cost_cents, "max_cost_cents", allow_none=True)
        non_negative(cost_cents_per_image, "cost_cents_per_image")
        if sum(value is not None for value in (source, images, s3_prefix)) != 1:
            raise VibeDreamValidationError(
                "give exactly one of source, images or s3_prefix (source takes a list, a folder or a prefix)",
                field="source",
            )
        if isinstance(include, str) or not include or not all(isinstance(p, str) and p for p in include):
            raise VibeDreamValidationError(
                f"include must be a list of file name patterns; got {include!r}", field="include"
            )
        choice("output_layout", output_layout, LAYOUTS)
        if staging_path is not None and not (
            isinstance(staging_path, str) and (staging_path.startswith("s3://") or "{{" in staging_path)
        ):
            raise VibeDreamValidationError(
                f"staging_path must be an s3://bucket/prefix the API can be given presigned URLs of; got "
                f"{staging_path!r}",
                field="staging_path",
            )
        self.source = source
        self.include = tuple(include)
        self.staging_path = staging_path
        self.output_layout = output_layout
        self.max_concurrency = positive_whole(max_concurrency, "max_concurrency")
        if requests_per_minute is not None:
            positive_seconds(requests_per_minute, "requests_per_minute")
        self.poll_interval = positive_seconds(poll_interval, "poll_interval")
        self.timeout = positive_seconds(timeout, "timeout")
        self.progress_interval = positive_seconds(progress_interval, "progress_interval")
        choice("target_resolution", target_resolution, TARGET_RESOLUTIONS, unless_templated=True)
        choice("output_format", output_format, OUTPUT_FORMATS, unless_templated=True)
        self.images = images
        self.s3_prefix = s3_prefix
        self.target_resolution = target_resolution
        self.output_format = output_format
        self.output_path = output_path
        self.output_name_template = validate_name_template(output_name_template)
        self.output_conn_id = output_conn_id
        self.requests_per_minute = requests_per_minute
        self.fail_on_error = fail_on_error
        self.vibedream_conn_id = vibedream_conn_id
        self.aws_conn_id = aws_conn_id
        self.deferrable = deferrable
        self.max_cost_cents = max_cost_cents
        self.cost_cents_per_image = cost_cents_per_image
        self._submitter: BatchSubmitter | None = None
        #: Input header facts read before each submit of this try, by image.
        self._input_facts: dict[str, ImageFacts] = {}
        #: The identities of a prefix's images, from its listing.
        self._listed: dict[str, ContentIdentity] = {}
        #: Each image's path relative to its folder or prefix (the dataset layout's name).
        self._relative: dict[str, str] = {}
        #: Where images the API cannot fetch are copied (set per try, with the task instance).
        self._staging: Staging | None = None
        #: Images the ledger says are done, by image key.
        self._reused: dict[str, LedgerEntry] = {}
        self._not_submitted: dict[str, str] = {}
        #: Images among ``_not_submitted`` that no retry can help (refused, known bad).
        self._permanent: set[str] = set()

    @cached_property
    def hook(self) -> VibeDreamHook:
        return VibeDreamHook(vibedream_conn_id=self.vibedream_conn_id)

    # -- inputs ------------------------------------------------------------------------------------

    def image_list(self) -> list[str]:
        """The rendered images, validated one by one (the field name says which one is wrong)."""
        choice("target_resolution", self.target_resolution, TARGET_RESOLUTIONS)
        choice("output_format", self.output_format, OUTPUT_FORMATS)
        field_name, value = next(
            (name, v)
            for name, v in (("source", self.source), ("images", self.images), ("s3_prefix", self.s3_prefix))
            if v is not None
        )
        self.staging_path = self.staging_path or None  # a template that rendered empty: none given
        if isinstance(value, str) and value.lstrip().startswith("["):
            value = json.loads(value)  # a templated XCom list
        if isinstance(value, str):
            found = list_source(value, self.include, aws_conn_id=self.aws_conn_id)
            self._listed = {
                i.uri: s3_identity(i.etag, i.size) for i in found if i.etag and i.size is not None
            }
            self._relative = {i.uri: i.relative for i in found if i.relative}
            images = [i.uri for i in found]
        elif isinstance(value, list):
            images = [self._one_image(f"{field_name}[{index}]", image) for index, image in enumerate(value)]
        else:
            raise VibeDreamValidationError(
                f"{field_name} must be a list of images, a folder or a prefix; got {value!r}",
                field=field_name,
            )
        if self.staging_path is None and (staged := next((i for i in images if needs_staging(i)), None)):
            raise VibeDreamValidationError(
                f"{staged!r} cannot be fetched by the API (a local file or another store's object): set "
                "staging_path to an s3://bucket/prefix where such images are copied for their jobs",
                field="staging_path",
            )
        return images

    def _one_image(self, field_name: str, image: Any) -> str:
        """One image of a list: a URL or ``s3://`` object, or (staged) a local file or store object."""
        if isinstance(image, str) and needs_staging(image) and self.staging_path is not None:
            return image
        return validate_image_source(field_name, image)

    def batch_images(self) -> list[BatchImage]:
        """Each image with what is asked for it (the image as named: ``s3://`` is never presigned here)."""
        return [
            BatchImage(
                index,
                image,
                JobSpec(
                    UPSCALER_MODEL_ID,
                    {
                        "image": image,
                        "target_resolution": self.target_resolution,
                        "output_format": self.output_format,
                        "enable_base64_output": False,
                        "enable_sync_mode": False,
                    },
                ),
            )
            for index, image in enumerate(self.image_list())
        ]

    @cached_property
    def _download_policy(self) -> DownloadPolicy:
        """The connection's download bounds, worked out once per try (it resolves the API's host)."""
        return download_policy(self.hook.get_client().settings)

    def _payload(self, item: BatchImage) -> dict[str, Any]:
        # An input the API would not accept is refused before its submit: that line is skipped.
        # Its size is kept for the outputs' aspect check, so a try that waits in the worker reads
        # each input's header once.
        if item.image not in self._input_facts:  # read once: before the submits, or here
            self._input_facts[item.image] = input_facts(
                item.image, aws_conn_id=self.aws_conn_id, policy=self._download_policy
            )
        expires = presign_seconds(self.timeout, self.retries)
        image = item.image
        if needs_staging(image) and self._staging is not None:
            # Named by the bytes' hash: the identity the ledger already read, when it is one.
            sha = item.identity.value if item.identity and item.identity.kind == "sha256" else None
            image = self._staging.stage(image, sha or sha256_of(image, self.aws_conn_id)[0])
        image = resolve_image(image, aws_conn_id=self.aws_conn_id, expires_in=expires)
        return UpscaleRequest(**{**item.spec.asked, "image": image}).to_payload()

    def _expectation(self, item: BatchImage, policy: DownloadPolicy) -> Expectation:
        """What this image's outputs must be: its input's size as read before its submit in this
        process, else read again from its header (after a deferral or a retry); when it cannot be
        read any more, the aspect ratio is not checked and the line's checks say so."""
        facts = self._input_facts.get(item.image)
        if facts is None:
            try:
                facts = input_facts(item.image, aws_conn_id=self.aws_conn_id, policy=policy)
            except VibeDreamValidationError as exc:
                self.log.warning(
                    "VibeDream batch: the aspect ratio of %s is not checked: %s", item.image, exc
                )
        return Expectation.for_upscale(self.target_resolution, self.output_format, facts)

    def _staging_of(self, context: Context) -> Staging | None:
        if self.staging_path is None:
            return None
        return Staging(self.staging_path, staging_folder(context["ti"]), self.aws_conn_id)

    def _store(self, context: Context) -> SubmissionStore:
        return SubmissionStore(context, self._signer(), handover_key=XCOM_SUBMISSIONS)

    def _signer(self) -> RecordSigner:
        """Signs this deployment's records (see :mod:`airflow_vibedream.jobs.signing`)."""
        return signer_for(self.hook.get_client().settings.api_key)

    def ledger_use(self, context: Context) -> BatchLedger:
        """The ledger beside ``output_path``."""
        return BatchLedger(
            Ledger(self.output_path, self.output_conn_id or self.aws_conn_id, self._signer()),
            TaskRef.of(context["ti"]),
            self.log,
            reuse=self.reuse_outputs,
            resubmit_unknown=self.resubmit_unknown,
            retry_failed=self.retry_failed,
        )

    def _identity_of(self, image: str) -> ContentIdentity:
        return identity_of(image, aws_conn_id=self.aws_conn_id, policy=self._download_policy)

    # -- the task ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        with permanent_errors_fail_the_task():
            items = self.batch_images()  # every input checked before any request
        self.log.info("VibeDream batch of %d images", len(items))
        self._staging = self._staging_of(context)
        store = self._store(context)
        client = self.hook.get_client()
        ledger = self.ledger_use(context)
        records = self._submit_all(store, client, items, ledger)
        records.update(self._kept_reasons(store, items))
        ids = sorted({r.prediction_id for r in records.values() if r.prediction_id})
        progress = self._progress(items, records, jobs=len(ids))
        context["ti"].xcom_push(key=PROGRESS_XCOM_KEY, value=progress.to_json())
        deadline = time.time() + self.timeout
        if self.deferrable and ids:
            store.hand_over()
            self.defer(
                trigger=VibeDreamBatchTrigger(
                    prediction_ids=ids,
                    vibedream_conn_id=self.vibedream_conn_id,
                    poll_interval=self.poll_interval,
                    end_time=deadline,
                    progress_interval=self.progress_interval,
                    progress=progress.to_json(),
                    duration_kind=f"{UPSCALER_MODEL_ID}:{self.target_resolution}",
                    fire_not_before=fire_not_before(),
                    model_id=UPSCALER_MODEL_ID,
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout + 60),
            )
        with permanent_errors_fail_the_task():
            outcome = wait_for_batch_in_worker(
                client,
                ids,
                WorkerWait(
                    deadline=deadline,
                    interval=self.poll_interval,
                    kind=f"{UPSCALER_MODEL_ID}:{self.target_resolution}",
                    concurrency=self.max_concurrency,
                    progress_interval=self.progress_interval,
                    model_id=UPSCALER_MODEL_ID,
                ),
                log=self.log,
                publish=lambda done, failed: context["ti"].xcom_push(
                    key=PROGRESS_XCOM_KEY, value=progress.advanced(done=done, failed=failed).to_json()
                ),
                reread=self.hook.reread_client,
            )
        return self._finish(context, items, records, outcome, ledger)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        items = self.batch_images()
        store = self._store(context)
        records = {item.key: r for item in items if (r := store.get(item.key)) is not None}
        if event.get("status") not in (EVENT_SUCCESS, EVENT_TIMEOUT):
            with permanent_errors_fail_the_task():
                raise error_from_event(event, prediction_id="batch")
        outcome = {pid: (FAILED, error) for pid, error in (event.get("failed") or {}).items()}
        outcome.update({pid: (PENDING, None) for pid in event.get("pending") or []})
        ledger = self.ledger_use(context)
        if ledger is not None:  # the images reused before the deferral: found again the same way
            unsettled = [item for item in {i.key: i for i in items}.values() if item.key not in records]
            identified, _ = ledger.identify(unsettled, self._listed, self._identity_of)
            # Only to find them: nothing is submitted after a resume, so no "to submit" tally is said.
            self._reused = ledger.sort(identified, say=False).reused
        return self._finish(context, items, records, outcome, ledger)

    def on_kill(self) -> None:
        # Called from Airflow's SIGTERM handler: only set a flag; the submit loop winds down itself.
        if self._submitter is not None:
            self._submitter.stop()

    def _progress(
        self, items: list[BatchImage], records: dict[str, SubmissionRecord], *, jobs: int
    ) -> BatchProgress:
        """The batch's progress record once its submits are done (the gallery shows it)."""
        waiting = {item.key for item in items if (r := records.get(item.key)) and r.prediction_id}
        local = {key for key, r in records.items() if r.state == LOCAL}
        return BatchProgress(
            images=len(items),
            jobs=jobs,
            unsubmitted=sum(1 for item in items if item.key not in waiting),
            reused=sum(1 for item in items if item.key in self._reused),
            resized=sum(1 for item in items if item.key in local),
            skipped=sum(1 for item in items if item.key in self._not_submitted),
            cost_cents=sum(r.cost_cents or 0 for r in records.values()),
            target_resolution=self.target_resolution,
            output_format=self.output_format,
        )

    # -- submits, resumable ------------------------------------------------------------------------

    def _submit_all(
        self,
        store: SubmissionStore,
        client: VibeDreamClient,
        items: list[BatchImage],
        ledger: BatchLedger | None,
    ) -> dict[str, SubmissionRecord]:
        """Every image's record: reused from an earlier try when made for the same request, else
        what the ledger knows of it, else submitted now. Identical requests in one batch share one
        job."""
        unique = list({item.key: item for item in items}.values())
        records: dict[str, SubmissionRecord] = {}
        for item in unique:
            record = store.get(item.key)
            # A job of an earlier try is adopted; its "not submitted" note is not: the image is looked
            # at again (a transient reason may have passed; a known-bad one is found in the ledger).
            if (
                record is not None
                and record.fingerprint == item.spec.fingerprint
                and record.state not in (REFUSED, SKIPPED)
            ):
                records[item.key] = record
        if records:
            unknown = sum(1 for r in records.values() if r.state == UNKNOWN)
            self.log.info(
                "Reusing %d predictions recorded by an earlier try (%d of them with submission state "
                "unknown, not resubmitted)",
                len(records) - unknown,
                unknown,
            )
        if len(unique) < len(items):
            self.log.info(
                "%d images repeat an earlier one in the list: one job serves each repeat",
                len(items) - len(unique),
            )
        todo = [item for item in unique if item.key not in records]
        taken_elsewhere: dict[str, tuple[BatchImage, LedgerEntry]] = {}
        if ledger is not None and todo:
            identified, self._not_submitted = ledger.identify(todo, self._listed, self._identity_of)
            sorted_ = ledger.sort(identified)
            self._reused = sorted_.reused
            self._not_submitted.update(sorted_.known_bad)
            self._permanent.update(sorted_.known_bad)
            records.update(self._kept(store, sorted_.records))
            todo = sorted_.todo
            taken_elsewhere = dict(sorted_.held)
        todo = self._resize_larger(store, todo, records)
        check_budget(len(todo), records, self.cost_cents_per_image, self.max_cost_cents, self.log)
        self._submitter = BatchSubmitter(
            client=client,
            store=store,
            log=self.log,
            payload=self._payload,
            max_concurrency=self.max_concurrency,
            requests_per_minute=self.requests_per_minute,
            request_timeout=client.settings.timeout,
            on_submitted=ledger.submitted if ledger is not None else None,
        )
        if ledger is None:
            self._took(self._submitter.submit_all(todo), records)
        else:
            self._took(ledger.submit(todo, self._submitter), records)
            records.update(self._kept(store, ledger.follow(taken_elsewhere)))
        return records

    def _resize_larger(
        self, store: SubmissionStore, todo: list[BatchImage], records: dict[str, SubmissionRecord]
    ) -> list[BatchImage]:
        """Inputs already at or above the target's long edge: not sent (the API would only shrink
        them, for the price of a job) but resized locally at the end; recorded so, across the
        deferral. Their headers are read here, once (the submits reuse what was read)."""
        if self.upscale_larger_inputs or not todo:
            return todo

        def facts(item: BatchImage) -> ImageFacts | None:
            try:
                return input_facts(item.image, aws_conn_id=self.aws_conn_id, policy=self._download_policy)
            except Exception:  # the submit reads it again and says why it is skipped
                return None

        with ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="vibedream-probe") as pool:
            read = dict(zip((item.image for item in todo), pool.map(facts, todo), strict=True))
        self._input_facts.update({image: found for image, found in read.items() if found is not None})
        larger = [
            item for item in todo if is_larger_than_target(read.get(item.image), self.target_resolution)
        ]
        for item in larger:
            records[item.key] = SubmissionRecord(
                item.spec.fingerprint, dict(item.spec.asked), None, state=LOCAL
            )
            store.set(item.key, records[item.key])
        if larger:
            self.log.info(
                "VibeDream batch: %d inputs are already at or above %s: resized locally, nothing paid "
                "(upscale_larger_inputs=True sends them to the API)",
                len(larger),
                self.target_resolution,
            )
        return [item for item in todo if item.key not in records]

    def _resize(self, context: Context, item: BatchImage, fixed_name: str | None) -> list[StoredOutput]:
        """Resize one input locally and store it as its output (verified as any output is)."""
        data = read_image_bytes(item.image, aws_conn_id=self.aws_conn_id, policy=self._download_policy)
        target = OutputTarget(
            self.output_path, self.output_name_template, self.output_conn_id or self.aws_conn_id
        )
        facts = self._input_facts.get(item.image)
        name_id = f"local-{hashlib.sha256(data).hexdigest()[:20]}"
        return target.store_outputs(
            [resized_data_uri(data, self.target_resolution, self.output_format)],
            name_id,
            context["ti"],
            self.output_format,
            self._download_policy,
            Expectation.for_upscale(self.target_resolution, self.output_format, facts),
            fixed_name,
            self._relative.get(item.image) or input_file_name(item.image),
        )

    @staticmethod
    def _kept(store: SubmissionStore, found: dict[str, SubmissionRecord]) -> dict[str, SubmissionRecord]:
        """Jobs the ledger names (an earlier try's, another task's), kept in the task's own records
        too: after a deferral only those are read, and an image that has none would be reported as
        never submitted, its job unpaid for in the summary and never fetched."""
        for key, record in found.items():
            store.set(key, record)
        return found

    def _took(self, result: SubmitResult, records: dict[str, SubmissionRecord]) -> None:
        self._not_submitted.update(result.errors)
        self._permanent.update(result.permanent)
        records.update(result.records)

    def _kept_reasons(self, store: SubmissionStore, items: list[BatchImage]) -> dict[str, SubmissionRecord]:
        """Why each image was not submitted, in the task's own records too: the manifest written after
        a deferral gives every skipped image its reason (and whether a retry can help)."""
        kept = {}
        for item in {i.key: i for i in items}.values():
            if (reason := self._not_submitted.get(item.key)) is None:
                continue
            state = SKIPPED if item.key in self._permanent else REFUSED
            kept[item.key] = SubmissionRecord(
                item.spec.fingerprint, dict(item.spec.asked), None, state=state, error=reason
            )
        try:
            for key, record in kept.items():
                store.set(key, record)
        except Exception as exc:  # only the reasons are lost: the images' own lines say "no reason"
            self.log.warning(
                "VibeDream batch: why %d images were not submitted is not kept: %s", len(kept), exc
            )
        return kept

    # -- results -----------------------------------------------------------------------------------

    def _dataset_names(self, items: list[BatchImage]) -> dict[str, str]:
        """The dataset layout's output name of each image (its relative path, else its file name)."""
        if self.output_layout != LAYOUT_DATASET:
            return {}
        relatives = {
            item.key: self._relative.get(item.image) or input_file_name(item.image) for item in items
        }
        names = dataset_names(list(relatives.values()), output_extension("", self.output_format))
        return {key: names[relative] for key, relative in relatives.items()}

    def _write_metadata(
        self,
        items: list[BatchImage],
        lines: list[dict[str, Any]],
        records: dict[str, SubmissionRecord],
        facts: dict[str, dict[str, Any]],
    ) -> str:
        """``metadata.jsonl`` at ``output_path``: every image present, loadable as an ImageFolder."""
        found = []
        seen: set[str] = set()
        for item, line in zip(items, lines, strict=True):
            output = facts.get(item.key)
            name = relative_name(line["outputs"][0], self.output_path) if line.get("outputs") else None
            if line["status"] not in PRESENT or output is None or name is None or name in seen:
                continue  # not present, or a repeat of an earlier image of the list
            seen.add(name)
            record = records.get(item.key)
            identity = (record.identity if record else None) or {}
            reused = self._reused.get(item.key)
            identity = identity or (reused.identity if reused else {})
            found.append(
                metadata_line(
                    file_name=name,
                    input_uri=item.image,
                    input_sha256=identity.get("value") if identity.get("kind") == "sha256" else None,
                    output=output,
                    model=item.spec.model_id,
                    target_resolution=self.target_resolution,
                    prediction_id=line.get("prediction_id"),
                    cost_cents=line.get("cost_cents"),
                )
            )
        uri, count = write_metadata(self.output_path, self.output_conn_id or self.aws_conn_id, found)
        self.log.info("VibeDream dataset: %s lists %d images", uri, count)
        return uri

    def _clean_staging(self, context: Context) -> None:
        """Delete this task instance's staged copies (this try's and any earlier try's)."""
        staging = self._staging or self._staging_of(context)
        if staging is None:
            return
        try:
            deleted = staging.clean()
        except Exception as exc:  # the jobs are done: a copy left behind costs storage, not a job
            self.log.warning("VibeDream batch: staged copies under %s not deleted: %s", staging.prefix, exc)
            return
        if deleted:
            self.log.info("VibeDream batch: %d staged copies deleted from %s", deleted, staging.prefix)

    def _finish(
        self,
        context: Context,
        items: list[BatchImage],
        records: dict[str, SubmissionRecord],
        outcome: dict[str, tuple[str, str | None]],
        ledger: BatchLedger | None = None,
    ) -> dict[str, Any]:
        """Store every finished job's outputs, write the manifest (one line per image), complete the
        ledger, publish the final progress; fail the task if asked to and something failed."""
        ti = context["ti"]
        target = OutputTarget(
            self.output_path, self.output_name_template, self.output_conn_id or self.aws_conn_id
        )
        policy = self._download_policy
        lines_of = ImageLines(
            client=self.hook.get_client(),
            target=target,
            ti=ti,
            output_format=self.output_format,
            policy=policy,
            expectation=lambda item: self._expectation(item, policy),
            records=records,
            outcome=outcome,
            reused=self._reused,
            not_submitted=self._not_submitted,
            permanent=self._permanent,
            log=self.log,
            fixed_names=self._dataset_names(items),
            input_names={
                item.key: self._relative.get(item.image) or input_file_name(item.image) for item in items
            },
            resize=lambda item, name: self._resize(context, item, name),
        )
        # One download per distinct job (repeated images share one), then one manifest line per image.
        unique = list({item.key: item for item in items}.values())
        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="vibedream-download") as pool:
            by_key = dict(zip((item.key for item in unique), pool.map(lines_of.line, unique), strict=True))
        if ledger is not None:
            complete_in_ledger(ledger, unique, records, by_key, lines_of.stored_by_key)
        lines = [{**by_key[item.key], "input": item.image} for item in items]
        retryable = any(item.get("retryable", False) for item in lines)
        for item in lines:
            item.pop("retryable", None)
        manifest = manifest_uri(self.output_path, ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
        write_text_atomically(
            manifest,
            "".join(json.dumps(item) + "\n" for item in lines),
            conn_id=target.conn_id,
            root=self.output_path,  # locally, no linked folder below output_path is followed
        )
        summary = summary_of(lines, records, manifest)
        summary["reasons"] = say_reasons(lines, self.log)
        if self.output_layout == LAYOUT_DATASET:
            summary["metadata"] = self._write_metadata(items, lines, records, lines_of.facts_by_key)
        self._clean_staging(context)
        self.log.info("VibeDream batch finished: %s", summary)
        jobs = {r.prediction_id for r in records.values() if r.prediction_id}
        final = (
            self._progress(items, records, jobs=len(jobs))
            .advanced(
                done=len(jobs) - sum(1 for state, _ in outcome.values() if state == PENDING),
                failed=sum(1 for state, _ in outcome.values() if state == FAILED),
            )
            .finished(
                completed_images=summary["completed"] + summary["reused"] + summary["resized_locally"],
                manifest=manifest,
                by_status=summary["by_status"],
            )
        )
        ti.xcom_push(key=PROGRESS_XCOM_KEY, value=final.to_json())
        if self.fail_on_error and summary["failed"]:
            fail_for(
                summary, [item["input"] for item in lines if item["status"] == STATUS_UNKNOWN], retryable
            )
        return summary
