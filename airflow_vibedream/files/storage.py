"""Output persistence: the API's download links (or base64 text) become files that last.

Every output is streamed (bounded memory), hashed and measured on the way, and written atomically:
a failed download leaves nothing at the final path. Destinations are Airflow ``ObjectStoragePath``
URIs (a local directory, ``file://``, ``s3://`` and every other scheme Airflow supports).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import re
import string
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import httpx
from PIL import Image

from airflow_vibedream.errors import OutputIncompleteError, OutputStorageError, VibeDreamValidationError
from airflow_vibedream.files.beneath import write_file
from airflow_vibedream.files.downloads import DownloadPolicy, download_chunks, is_data_output

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
#: Buffer (and multipart part) size for object-store writes. s3fs defaults to 50 MiB, which with its
#: copies costs ~150 MiB per upload; 8 MiB keeps an upload near 25 MiB (S3 parts must be >= 5 MiB).
UPLOAD_BLOCK_SIZE = 8 * 1024 * 1024

#: Default name of a stored output, relative to ``output_path``. Deterministic: a retry of the same
#: task for the same prediction overwrites rather than duplicates.
DEFAULT_OUTPUT_NAME = "{dag_id}/{run_id}/{task_id}{map_suffix}/{prediction_id}-{index}.{ext}"

#: The only extensions a stored output gets, by format or suffix; anything else is ``bin``.
_EXTENSIONS = {"JPEG": "jpg", "JPG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}
#: The fields an ``output_name_template`` may use.
NAME_FIELDS = frozenset(
    {"dag_id", "run_id", "task_id", "map_suffix", "prediction_id", "index", "ext", "input_stem", "input_path"}
)
#: Characters a folder name keeps as they are: ASCII letters and digits, ``.``, ``_``, ``=``, ``-``
#: (what every file system and object store treats alike). Any run of others becomes one ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")
#: Marks a name whose value was changed to become one (followed by a hash of the value). Not in the
#: kept characters above, so no unchanged name contains it; unreserved in URIs (RFC 3986), so URIs,
#: object keys and presigned URLs carry it unescaped.
NAME_HASH_MARK = "~"
#: Hex digits of the value's SHA-256 in a changed name: 80 bits, so giving another value the name
#: of a known one (a second preimage) costs ~2**80 hashes.
NAME_HASH_DIGITS = 20
#: The longest value kept as it is (Airflow's own ids hold at most 250 characters); the readable part
#: of a changed name is cut to ``_READABLE_CHARS``, so no name is longer than 250 characters.
MAX_KEPT_NAME = 250
_READABLE_CHARS = 200
#: The readable part of a changed name when nothing of the value is left (``..``, ``///``).
_EMPTY_READABLE = "id"


@dataclass(frozen=True)
class StoredOutput:
    """One persisted output.

    :param uri: where it is stored.
    :param bytes: its size.
    :param sha256: hex digest of its bytes.
    :param width: pixel width (None if the bytes are not a recognisable image).
    :param height: pixel height.
    :param format: image format as Pillow names it (``JPEG``, ``PNG``, ``WEBP``).
    :param checks: the verifications it passed (``complete``, ``decodes``, ``format``,
        ``long_edge``, ``aspect``; see :mod:`airflow_vibedream.files.verify`).
    """

    uri: str
    bytes: int
    sha256: str
    width: int | None
    height: int | None
    format: str | None
    checks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "checks": list(self.checks)}


def safe_segment(value: object) -> str:
    """The folder (or file name part) of an id: a DAG, run, task or prediction id. One path segment,
    and a different one for every different value, so two DAGs, runs or tasks never share a folder.

    - A value that is already a clean name keeps it exactly: only ASCII letters, digits, ``.``,
      ``_``, ``=`` and ``-``, not starting or ending with ``.`` or ``_``, at most 250 characters
      (``my_dag``, ``group.task``, ``run-2026-01-01``).
    - Any other value is named by its cleaned text, then ``~``, then 20 hex digits of the SHA-256 of
      the value itself (UTF-8): each run of other characters becomes ``_``, leading and trailing
      ``.`` and ``_`` are dropped, the text is cut to 200 characters, and ``id`` stands in when
      nothing is left. ``manual__2026-01-01T00:00:00+00:00`` ->
      ``manual__2026-01-01T00_00_00_00_00~<hash>``; ``reports_`` -> ``reports~<hash>``.

    Why no two values share a name: a name without ``~`` is the value itself (``~`` is not a kept
    character, so no kept value contains it); a name with ``~`` ends in a hash of its value. So an
    unchanged name never equals a changed one, two unchanged names are equal only for equal values,
    and two changed names only for values whose SHA-256 agrees on 80 bits (none known; finding one
    that matches a given name costs ~2**80 hashes). The cleaned text only makes the name readable.

    Why the name is one safe segment: its characters are the kept ones and ``~`` (no ``/`` or
    ``\\``, nothing an object store or file system reads differently), it is never empty and never
    starts with ``.`` (no ``.`` or ``..``, no hidden file) or ``_``: names beginning with ``_`` are
    left to the provider's own folders beside the DAGs' (``_vibedream_ledger``), which no id can
    name. It never ends with ``.`` either (some file systems drop a trailing dot). Letter case is
    kept, as Airflow keeps it in ids: on a case-insensitive file system (macOS's default, some SMB
    shares) ``Reports`` and ``reports`` would still share a folder, so store outputs of DAGs that must
    not see each other on a case-sensitive one (Linux, S3).

    :param value: the id (anything else is named by its ``str()``).
    :return: the segment.
    """
    text = str(value)
    cleaned = _UNSAFE.sub("_", text).strip("._")
    if cleaned == text and 0 < len(text) <= MAX_KEPT_NAME:
        return text
    # ``surrogatepass``: a lone surrogate (from JSON) is still a distinct value, hashed distinctly.
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:NAME_HASH_DIGITS]
    return f"{cleaned[:_READABLE_CHARS] or _EMPTY_READABLE}{NAME_HASH_MARK}{digest}"


def storage_uri(output_path: str) -> str:
    """``output_path`` as a URI: a plain path means the local file system."""
    if "://" not in output_path:
        return "file://" + str(Path(output_path).expanduser().resolve())
    return output_path


def as_storage_path(output_path: str, conn_id: str | None = None) -> Any:
    """``output_path`` as an ObjectStoragePath, through ``conn_id`` for remote stores."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    uri = storage_uri(output_path)
    if uri.startswith("file://") or conn_id is None:
        return ObjectStoragePath(uri)
    return ObjectStoragePath(uri, conn_id=conn_id)


def _decoded_chunks(output: str) -> Iterator[bytes]:
    text = output.split(",", 1)[1] if output.startswith("data:") else output
    try:
        yield base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise OutputStorageError(f"An output is neither a URL nor valid base64 text ({exc})") from exc


class _Inspector:
    """Hashes, counts and identifies an output while it streams past.

    Hashing runs in a helper thread (hashlib releases the GIL on large buffers), so it overlaps the
    download and the write instead of adding to them; at most ``MAX_PENDING`` chunks wait for it.
    Identification reads the header only: the first bytes are kept (at most ``HEADER_BYTES``) and
    given to ``Image.open``, which parses headers lazily. (Pillow's incremental ``ImageFile.Parser``
    would start decoding, and an 8K decode alone is ~100 MB of memory.)
    """

    HEADER_BYTES = 256 * 1024
    TAIL_BYTES = 16
    MAX_PENDING = 8

    def __init__(self) -> None:
        self.size = 0
        self._tail = b""
        self._sha256 = hashlib.sha256()
        self._head = bytearray()
        self._pending = threading.BoundedSemaphore(self.MAX_PENDING)
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vibedream-sha256")
        self._last: Future[None] | None = None

    def _hash(self, chunk: bytes) -> None:
        try:
            self._sha256.update(chunk)
        finally:
            self._pending.release()

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if len(self._head) < self.HEADER_BYTES:
            self._head += chunk[: self.HEADER_BYTES - len(self._head)]
        self._tail = (self._tail + chunk[-self.TAIL_BYTES :])[-self.TAIL_BYTES :]
        self._pending.acquire()
        # One worker thread: chunks are hashed in the order they were fed.
        self._last = self._hasher.submit(self._hash, chunk)

    def sha256(self) -> str:
        if self._last is not None:
            self._last.result()
        self._hasher.shutdown()
        return self._sha256.hexdigest()

    def close(self) -> None:
        self._hasher.shutdown(cancel_futures=True)

    def complete(self, image_format: str | None) -> bool:
        """Whether the bytes reach the end of the image their header announces: PNG up to its IEND
        chunk, JPEG to its EOI marker, WebP to its RIFF length, GIF to its trailer."""
        head, tail = bytes(self._head[:12]), self._tail
        if image_format == "PNG":
            return tail.endswith(b"IEND\xaeB`\x82")
        if image_format == "JPEG":
            return tail.endswith(b"\xff\xd9")
        if image_format == "WEBP":
            return head[:4] == b"RIFF" and int.from_bytes(head[4:8], "little") + 8 == self.size
        if image_format == "GIF":
            return tail.endswith(b";")
        return False

    def identify(self) -> tuple[int | None, int | None, str | None]:
        """(width, height, format) from the header, or Nones if the bytes are no known image."""
        try:
            with Image.open(io.BytesIO(bytes(self._head))) as image:
                return image.size[0], image.size[1], image.format
        except Exception:  # not an image Pillow knows, or a header beyond HEADER_BYTES: no dimensions
            return None, None, None


#: ObjectStoragePath protocols of the local file system.
_LOCAL_PROTOCOLS = ("file", "local", "")


def _local_root(path: Any) -> Path | None:
    """The local folder of an ObjectStoragePath (None: an object store)."""
    return Path(path.path) if path.protocol in _LOCAL_PROTOCOLS else None


def _write_atomically(
    target: Any,
    chunks: Iterable[bytes],
    inspector: _Inspector,
    verify: Callable[[], None] | None = None,
    *,
    root: Path | None = None,
) -> None:
    """Write ``chunks`` to ``target`` so that it exists only complete, and only if ``verify()``
    (called once everything streamed past, before the file is published) raises nothing.

    A local ``target`` is written below ``root`` (the ``output_path``; default: the target's own
    folder) as an untrusted place (:func:`airflow_vibedream.files.beneath.write_file`): whoever may write
    into ``output_path`` may have made a folder on the way a link, and a write must not follow it
    out. ``root`` itself may be a link (the deployment's); a link below it raises
    :class:`~airflow_vibedream.errors.UnsafeLocalPathError` before anything is written."""
    if target.protocol in _LOCAL_PROTOCOLS:
        local = PurePosixPath(target.path)
        base = PurePosixPath(root) if root is not None else local.parent
        try:
            relative = local.relative_to(base).as_posix()
        except ValueError:
            raise OutputStorageError(f"{target.path} is not below {base}") from None

        def fill(handle: IO[bytes]) -> None:
            # A hidden temporary beside the target, renamed into place when complete and verified.
            _copy(chunks, handle, inspector)
            if verify is not None:
                verify()

        write_file(Path(base), relative, fill, suffix=".partial")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # Object stores publish an object only when its upload completes; on failure abort the upload
    # (fsspec's discard) so the buffered part is never committed at the final key. The file is
    # opened on the store's own file system, so this code owns the handle it aborts (the operators
    # report lineage of stored outputs themselves).
    handle = target.fs.open(target.path, "wb", block_size=UPLOAD_BLOCK_SIZE)
    try:
        _copy(chunks, handle, inspector)
        if verify is not None:
            verify()
    except BaseException:
        abort_upload(handle)
        raise
    handle.close()


def abort_upload(handle: Any) -> None:
    """Throw away an fsspec upload in progress: nothing is committed at its key. ``discard()`` leaves
    the file open with no buffer; marked closed (fsspec's own flag, set as its ``close()`` does), its
    finaliser does not try to flush what was thrown away."""
    handle.discard()
    handle.closed = True


def _copy(chunks: Iterable[bytes], handle: IO[bytes], inspector: _Inspector) -> None:
    for chunk in chunks:
        inspector.feed(chunk)
        handle.write(chunk)


#: Downloads of one output, at most, while its bytes come back cut short or undecodable.
DOWNLOAD_ATTEMPTS = 3

#: Checks an output against what was asked: ``(width, height, format, uri)`` -> the checks passed,
#: or an :class:`~airflow_vibedream.errors.InvalidOutputError` naming what differed.
OutputCheck = Callable[[int, int, str, str], list[str]]


def store_output(
    output: str,
    target: Any,
    *,
    http: httpx.Client,
    uri: str | None = None,
    policy: DownloadPolicy | None = None,
    check: OutputCheck | None = None,
    attempts: int = DOWNLOAD_ATTEMPTS,
    root: Path | None = None,
) -> StoredOutput:
    """Stream one output (URL or base64) to ``target`` atomically, verified, and describe it.

    Verified while it streams, with no second read: its header decodes and its bytes reach the end
    of the image (else it is downloaded again, ``attempts`` times in all: a cut download), then
    ``check`` compares it with what was asked (a complete but wrong image is never stored and never
    downloaded again). Nothing is left at the final name unless every check passed.

    ``uri`` is how the result names the target (ObjectStoragePath's own string carries the
    connection id, which is no part of the object's address). ``root``: the local ``output_path``
    the target lies below; no folder below it is followed if it is a link (see
    :func:`_write_atomically`)."""
    where = uri or str(target)
    # Base64 text is the same however often it is read: one attempt.
    for attempt in range(1, (1 if is_data_output(output) else attempts) + 1):
        inspector = _Inspector()
        facts: dict[str, Any] = {}

        def verify(inspector: _Inspector = inspector, facts: dict[str, Any] = facts) -> None:
            width, height, image_format = inspector.identify()
            facts["size"] = (width, height, image_format)
            if check is None:  # not an image model's output: described, not judged
                facts["checks"] = []
                return
            if (
                width is None
                or height is None
                or image_format is None
                or not inspector.complete(image_format)
            ):
                raise OutputIncompleteError(
                    f"The output for {where} is cut short or does not decode ({inspector.size} bytes"
                    f"{', ' + image_format if image_format else ''})"
                )
            facts["checks"] = check(width, height, image_format, where)

        try:
            if is_data_output(output):
                _write_atomically(target, _decoded_chunks(output), inspector, verify, root=root)
            else:
                # A plain client with no Authorization: outputs live on another host than the API.
                chunks = download_chunks(output, http, policy or DownloadPolicy())
                _write_atomically(target, chunks, inspector, verify, root=root)
        except OutputIncompleteError as exc:
            inspector.close()
            if attempt >= attempts or is_data_output(output):
                raise OutputIncompleteError(f"{exc}, after {attempt} download(s)") from None
            log.warning("%s: downloading it again (attempt %d of %d)", exc, attempt + 1, attempts)
            continue
        except httpx.HTTPError as exc:
            inspector.close()
            raise OutputStorageError(f"Downloading {output} failed: {type(exc).__name__} {exc}") from exc
        except BaseException:
            inspector.close()
            raise
        width, height, image_format = facts["size"]
        return StoredOutput(
            uri=where,
            bytes=inspector.size,
            sha256=inspector.sha256(),
            width=width,
            height=height,
            format=image_format,
            checks=tuple(facts["checks"]),
        )
    raise AssertionError("unreachable: the last attempt returns or raises")


def output_extension(output: str, output_format: str | None) -> str:
    """The file extension, from a fixed map only: a format, a ``data:image/<subtype>`` or a URL's
    suffix never puts its own text into a file name."""
    if output_format:
        candidate = output_format
    elif output.startswith("data:image/"):
        candidate = output[len("data:image/") :].split(";", 1)[0].split(",", 1)[0]
    elif not is_data_output(output):
        candidate = Path(httpx.URL(output).path).suffix.lstrip(".")
    else:
        candidate = ""
    return _EXTENSIONS.get(candidate.upper(), "bin")


def validate_name_template(template: Any, field_name: str = "output_name_template") -> str:
    """A name template that keeps every output inside ``output_path``: known fields only, relative,
    no segment of only dots (``.``, ``..``), whatever values the fields get (checked when the
    operator is built, so a bad one never costs a job).

    The check is structural, so one rendering stands for all: ``dag_id``, ``run_id``, ``task_id``
    and ``prediction_id`` pass through :func:`safe_segment` (never empty, never a separator, never
    only dots, and different for different values), ``index`` is digits and ``ext`` comes from a
    fixed map, so a path segment holding any of them is an ordinary name whatever its value, and a
    segment holding none of them is the template's own text. Only ``map_suffix`` adds separators and
    segments of its own: the template is rendered with each value it takes (``""`` for an unmapped
    task, ``/map_<n>`` for a mapped one).
    Format specs could change what a field renders to (``{dag_id:.0}`` is empty), so only ``index``
    may have one, and only padding (``{index:03d}``); conversions (``!r``) are refused.

    :param template: the ``str.format`` template of an output's name relative to ``output_path``.
    :param field_name: the parameter named in errors.
    :raises VibeDreamValidationError: the template names unknown fields, formats a field other than
        by padding ``index``, or could render a name outside ``output_path``.
    """
    if not isinstance(template, str) or not template.strip():
        raise VibeDreamValidationError(
            f"{field_name} must be a non-empty text; got {template!r}", field=field_name
        )
    try:
        fields = [
            (name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
        ]
    except ValueError as exc:
        raise VibeDreamValidationError(
            f"{field_name} is not a valid template: {exc}", field=field_name
        ) from None
    names = [name for name, _, _ in fields if name is not None]
    unknown = sorted({name for name in names if name not in NAME_FIELDS})
    if unknown:
        raise VibeDreamValidationError(
            f"{field_name} uses unknown field(s) {', '.join(repr(n) for n in unknown)}; "
            f"known: {', '.join(sorted(NAME_FIELDS))}",
            field=field_name,
        )
    for name, spec, conversion in fields:
        # Zero- or space-padding keeps index digits; any other spec or conversion could render a field
        # empty, as dots or as separators (a nested "{...}" in a spec is refused here too).
        if name is not None and (
            conversion is not None or (spec and not (name == "index" and re.fullmatch(r"0?\d{0,2}d?", spec)))
        ):
            raise VibeDreamValidationError(
                f"{field_name} may format only index, and only by padding (e.g. {{index:03d}}); got "
                f"{template!r}",
                field=field_name,
            )
    # Stand-ins for the opaque fields (see the docstring); map_suffix takes each value it can take.
    for map_suffix in ("", "/map_0"):
        sample = template.format(
            dag_id="x",
            run_id="x",
            task_id="x",
            prediction_id="x",
            index=0,
            ext="x",
            map_suffix=map_suffix,
            input_stem="x",
            input_path="x/x",  # its segments are plain names (see sources.dataset_name)
        )
        segments = sample.replace("\\", "/").split("/")
        if (
            sample.startswith(("/", "\\"))
            or re.match(r"^[A-Za-z]:[\\/]", sample)
            or any(segment and not segment.strip(".") for segment in segments)
            or "://" in sample
        ):
            raise VibeDreamValidationError(
                f"{field_name} must be a relative name inside output_path (no leading '/', no '..'); "
                f"got {template!r}",
                field=field_name,
            )
    return template


def persist_outputs(
    outputs: list[str],
    output_path: str,
    *,
    names: dict[str, Any],
    output_format: str | None = None,
    name_template: str = DEFAULT_OUTPUT_NAME,
    conn_id: str | None = None,
    policy: DownloadPolicy | None = None,
    check: OutputCheck | None = None,
    fixed_name: str | None = None,
) -> list[StoredOutput]:
    """Store every output of one prediction under ``output_path``, each verified by ``check``
    (see :func:`store_output`; None: outputs of a model whose outputs are not known to be images).

    :param outputs: the prediction's outputs (download URLs or base64 text).
    :param output_path: destination directory URI.
    :param names: values for ``name_template`` (dag_id, run_id, task_id, map_index, prediction_id).
    :param output_format: the requested format, for the file extension.
    :param name_template: relative name of each output, a ``str.format`` template.
    :param policy: the bounds of each download (size, total time, destinations).
    :param conn_id: the Airflow connection of a remote store (e.g. ``aws_default`` for ``s3://``).
    :param fixed_name: instead of ``name_template``, the first output's relative name (the dataset
        layout: made by :func:`~airflow_vibedream.files.sources.dataset_name`, each segment a plain name);
        any further output gets ``-<index>`` before its extension.
    """
    base = as_storage_path(output_path, conn_id)
    base_uri = storage_uri(output_path).rstrip("/")
    map_index = names.get("map_index", -1)
    fields = {key: safe_segment(value) for key, value in names.items() if key != "input_path"}
    # The input's relative path: made of plain segments already (sources.dataset_name), kept as it is.
    fields["input_path"] = str(names.get("input_path") or fields.get("input_stem") or "input")
    fields.setdefault("input_stem", "input")
    fields["map_suffix"] = f"/map_{map_index}" if isinstance(map_index, int) and map_index >= 0 else ""
    stored: list[StoredOutput] = []
    with httpx.Client(follow_redirects=False) as http:
        for index, output in enumerate(outputs):
            if fixed_name is not None:
                stem, _, ext = fixed_name.rpartition(".")
                relative = fixed_name if index == 0 else f"{stem}-{index}.{ext}"
            else:
                relative = name_template.format(
                    **fields, index=index, ext=output_extension(output, output_format)
                )
            stored.append(
                store_output(
                    output,
                    base / relative,
                    http=http,
                    uri=f"{base_uri}/{relative}",
                    policy=policy,
                    check=check,
                    root=_local_root(base),
                )
            )
    return stored


def write_text_atomically(
    uri: str, text: str, *, conn_id: str | None = None, root: str | None = None
) -> StoredOutput:
    """Write a small text file (a manifest) the same atomic way as outputs.

    :param uri: where.
    :param text: what.
    :param conn_id: the connection of a remote store.
    :param root: the ``output_path`` that ``uri`` lies below: locally, no folder below it is
        followed if it is a link (None: only the file's own folder is trusted).
    """
    inspector = _Inspector()
    target = as_storage_path(uri, conn_id)
    data = text.encode()
    local_root = _local_root(as_storage_path(root)) if root and target.protocol in _LOCAL_PROTOCOLS else None
    try:
        _write_atomically(target, [data], inspector, root=local_root)
    except BaseException:
        inspector.close()
        raise
    return StoredOutput(
        uri=storage_uri(uri), bytes=len(data), sha256=inspector.sha256(), width=None, height=None, format=None
    )


def copy_output(
    source_uri: str, target_uri: str, *, conn_id: str | None = None, root: str | None = None
) -> StoredOutput:
    """Copy a stored output (one the ledger names, its hash verified) to another name, atomically:
    the dataset layout puts a reused image where its input's relative path says.

    :param source_uri: where the output is.
    :param target_uri: where it goes.
    :param conn_id: the connection of a remote store.
    :param root: the ``output_path`` that ``target_uri`` lies below (see :func:`write_text_atomically`).
    """
    inspector = _Inspector()
    target = as_storage_path(target_uri, conn_id)
    source = as_storage_path(source_uri, conn_id)
    local_root = _local_root(as_storage_path(root)) if root and target.protocol in _LOCAL_PROTOCOLS else None

    def chunks() -> Iterator[bytes]:
        with source.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                yield chunk

    try:
        _write_atomically(target, chunks(), inspector, root=local_root)
    except BaseException:
        inspector.close()
        raise
    width, height, image_format = inspector.identify()
    return StoredOutput(
        uri=storage_uri(target_uri),
        bytes=inspector.size,
        sha256=inspector.sha256(),
        width=width,
        height=height,
        format=image_format,
    )
