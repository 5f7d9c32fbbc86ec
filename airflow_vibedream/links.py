"""Operator extra links. Airflow 3 stores each link's URL in an XCom when the task finishes *or
defers* (the task runner's ``finalize``), so a waiting task shows its links too. The URLs point at
the gallery app, which decides at click time: it checks the user may read the DAG, then redirects
to a fresh short-lived presigned URL (``s3://``) or streams the file. A presigned URL stored at
task time would have expired by the time someone clicks."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from airflow.providers.common.compat.sdk import BaseOperatorLink, conf

#: Where the gallery app is mounted on the api-server.
URL_PREFIX = "/vibedream"


def app_url(path: str, **params: Any) -> str:
    """An absolute URL of the gallery app when ``[api] base_url`` is set, else a root-relative one
    (the UI opens it against its own origin)."""
    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    query = urlencode({key: value for key, value in params.items() if value is not None})
    return f"{base}{URL_PREFIX}{path}" + (f"?{query}" if query else "")


def task_params(ti_key: Any) -> dict[str, Any]:
    """The task instance a link is about, as query parameters."""
    map_index = getattr(ti_key, "map_index", -1)
    return {
        "dag_id": ti_key.dag_id,
        "run_id": ti_key.run_id,
        "task_id": ti_key.task_id,
        "map_index": map_index if map_index is not None else -1,
    }


class VibeDreamOutputLink(BaseOperatorLink):
    """The stored output of a single-image task (a presigned URL made when clicked for ``s3://``)."""

    name = "VibeDream output"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return app_url("/output", **task_params(ti_key))


class VibeDreamManifestLink(BaseOperatorLink):
    """A batch's JSONL manifest."""

    name = "VibeDream manifest"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return app_url("/manifest", **task_params(ti_key))


class VibeDreamGalleryLink(BaseOperatorLink):
    """The gallery's page of one batch: progress while it runs, before/after pairs when done."""

    name = "VibeDream gallery"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return app_url("/batch", **task_params(ti_key))
