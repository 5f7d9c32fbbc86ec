"""The dataset layout's index: ``metadata.jsonl`` at ``output_path``, in the form Hugging Face's
ImageFolder reads (``file_name`` relative to the folder, one JSON object per line), listing exactly
the images present after the run, so ``datasets.load_dataset("imagefolder", data_dir=output_path)``
and ``pandas.read_json(..., lines=True)`` load it as it is.

It is rewritten whole (atomically) at the end of each run: this run's images, then the lines of an
earlier run whose file is still present and which this run did not touch (an input removed from the
source leaves its output, and its line, until someone deletes the file).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from airflow_vibedream.files.storage import as_storage_path, storage_uri, write_text_atomically

log = logging.getLogger(__name__)

METADATA_NAME = "metadata.jsonl"
#: Statuses whose output is in the folder.
PRESENT = ("completed", "reused", "resized_locally")
#: The fields of a line, in order.
FIELDS = (
    "file_name",
    "input_uri",
    "input_sha256",
    "output_sha256",
    "width",
    "height",
    "model",
    "target_resolution",
    "prediction_id",
    "cost_cents",
    "created_at",
)


def relative_name(output_uri: str, output_path: str) -> str | None:
    """``output_uri`` relative to ``output_path`` (None when it lies elsewhere)."""
    base = storage_uri(output_path).rstrip("/") + "/"
    return output_uri[len(base) :] if output_uri.startswith(base) else None


def metadata_line(
    *,
    file_name: str,
    input_uri: str,
    input_sha256: str | None,
    output: dict[str, Any],
    model: str,
    target_resolution: str,
    prediction_id: str | None,
    cost_cents: int | None,
) -> dict[str, Any]:
    """One image's line (``output``: its stored output's ``sha256``, ``width``, ``height``)."""
    return {
        "file_name": file_name,
        "input_uri": input_uri,
        "input_sha256": input_sha256,
        "output_sha256": output.get("sha256"),
        "width": output.get("width"),
        "height": output.get("height"),
        "model": model,
        "target_resolution": target_resolution,
        "prediction_id": prediction_id,
        "cost_cents": cost_cents,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _plain_relative(name: Any) -> bool:
    """A name an earlier line may carry forward: relative, inside the folder, not the provider's."""
    if not isinstance(name, str) or not name or name.startswith(("/", "\\")) or "://" in name:
        return False
    parts = name.split("/")
    return all(part not in ("", ".", "..") and "\\" not in part for part in parts) and not parts[
        0
    ].startswith("_")


def _earlier_lines(output_path: str, conn_id: str | None) -> list[dict[str, Any]]:
    """The lines of the current ``metadata.jsonl`` (data: only their names are used, to look for
    the files, each checked to be a plain name inside the folder)."""
    path = as_storage_path(f"{storage_uri(output_path).rstrip('/')}/{METADATA_NAME}", conn_id)
    try:
        if not path.exists():
            return []
        text = path.read_text()
    except Exception as exc:  # unreadable: rebuilt from this run's images alone
        log.warning("VibeDream dataset: the earlier %s is not read (%s)", METADATA_NAME, exc)
        return []
    lines = []
    for raw in text.splitlines()[:1_000_000]:
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and _plain_relative(line.get("file_name")):
            lines.append({key: line.get(key) for key in FIELDS})
    return lines


def write_metadata(output_path: str, conn_id: str | None, lines: list[dict[str, Any]]) -> tuple[str, int]:
    """Rewrite ``metadata.jsonl`` with ``lines`` (this run's images) and the earlier lines whose
    file is still present. Returns (its URI, the number of lines)."""
    base = storage_uri(output_path).rstrip("/")
    mine = {line["file_name"] for line in lines}
    kept = []
    for line in _earlier_lines(output_path, conn_id):
        name = line["file_name"]
        if name in mine:
            continue
        try:
            if as_storage_path(f"{base}/{name}", conn_id).is_file():
                kept.append(line)
                mine.add(name)
        except Exception:  # cannot be looked at: not listed as present
            continue
    everything = sorted([*lines, *kept], key=lambda line: line["file_name"])
    uri = f"{base}/{METADATA_NAME}"
    write_text_atomically(
        uri,
        "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in everything),
        conn_id=conn_id,
        root=output_path,
    )
    return uri, len(everything)
