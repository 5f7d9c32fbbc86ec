"""The gallery: a FastAPI app the api-server mounts at ``/vibedream`` (see :mod:`.plugin`).

Routes (all ``GET``, all behind Airflow's auth manager, see :mod:`.access`):
``/gallery`` before/after pairs, filters, cost totals; ``/batch`` one batch's progress and images;
``/thumb`` one thumbnail; ``/output`` and ``/manifest`` what the operator extra links open;
``/api/progress`` a batch's progress as JSON."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, status
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse

from airflow_vibedream.errors import OutputStorageError
from airflow_vibedream.plugins import pages, queries
from airflow_vibedream.plugins.access import readable_dag_ids, require_dag, user_dependency
from airflow_vibedream.plugins.records import PROGRESS_XCOM_KEY, RESULT_XCOM_KEY, BatchProgress
from airflow_vibedream.plugins.sources import (
    SourceRefused,
    SourceRules,
    http_policy_for,
    media_type,
    open_chunks,
    presigned_url,
)
from airflow_vibedream.plugins.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

#: Entries per gallery page and images per batch page.
PER_PAGE = 24
#: Manifests kept parsed in memory (a 10,000-line manifest is a few MB).
MANIFESTS_KEPT = 4

User = Annotated[Any, Depends(user_dependency())]


class Settings:
    """The gallery's settings, read from Airflow's configuration once (``[vibedream]`` section)."""

    @cached_property
    def rules(self) -> SourceRules:
        return SourceRules.from_config()

    @cached_property
    def cache(self) -> ThumbnailCache:
        from airflow.providers.common.compat.sdk import conf

        home = Path(conf.get("core", "airflow_home", fallback=".") or ".")
        directory = conf.get("vibedream", "gallery_cache_dir", fallback="") or str(
            home / "vibedream-thumbnails"
        )
        max_mb = conf.getint("vibedream", "gallery_cache_mb", fallback=256)
        path = Path(directory).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return ThumbnailCache(path, max_mb * 1024 * 1024)

    @cached_property
    def ui_root(self) -> str:
        from airflow.providers.common.compat.sdk import conf

        return pages.ui_root(conf.get("api", "base_url", fallback="") or "")


settings = Settings()


class Manifests:
    """Parsed manifests, the few most recently used (a batch page is paged through, not reread)."""

    def __init__(self) -> None:
        self._kept: OrderedDict[tuple[str, float], list[dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def lines(self, progress: BatchProgress) -> list[dict[str, Any]]:
        if not progress.manifest:
            return []
        key = (progress.manifest, progress.updated_at)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        with open_chunks(
            progress.manifest, rules=settings.rules, conn_id=progress.output_conn_id, http_policy=None
        ) as chunks:
            text = b"".join(chunks).decode()
        parsed = [
            line for raw in text.splitlines() if raw.strip() and isinstance(line := json.loads(raw), dict)
        ]
        with self._lock:
            self._kept[key] = parsed
            while len(self._kept) > MANIFESTS_KEPT:
                self._kept.popitem(last=False)
        return parsed


manifests = Manifests()


def _record(user: Any, dag_id: str, run_id: str, task_id: str, map_index: int, key: str) -> dict[str, Any]:
    require_dag(user, dag_id)
    record = queries.one(dag_id, run_id, task_id, map_index, key)
    if record is None:
        what = "result" if key == RESULT_XCOM_KEY else "batch"
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"No VibeDream {what} for {dag_id}/{run_id}/{task_id}[{map_index}] yet (not finished?)",
        )
    return record


def _progress(user: Any, dag_id: str, run_id: str, task_id: str, map_index: int) -> BatchProgress:
    progress = BatchProgress.from_json(_record(user, dag_id, run_id, task_id, map_index, PROGRESS_XCOM_KEY))
    if progress is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Unreadable batch progress record")
    return progress


def _refused(exc: SourceRefused) -> HTTPException:
    log.warning("VibeDream gallery: refused: %s", exc)
    return HTTPException(status.HTTP_403_FORBIDDEN, str(exc))


def _not_found(detail: str) -> HTTPException:
    """A stored image that could not be read: said in the api-server's log too, where an operator
    looks for why a thumbnail is missing."""
    log.warning("VibeDream gallery: %s", detail)
    return HTTPException(status.HTTP_404_NOT_FOUND, detail)


def _stream(uri: str, conn_id: str | None, vibedream_conn_id: str | None) -> StreamingResponse:
    """Stream a stored object to the browser (after the first chunk, so a refusal is a clean 4xx)."""
    context = open_chunks(
        uri, rules=settings.rules, conn_id=conn_id, http_policy=http_policy_for(vibedream_conn_id)
    )
    try:
        chunks = context.__enter__()
        first = next(chunks, b"")
    except SourceRefused as exc:
        raise _refused(exc) from exc
    except (OutputStorageError, OSError) as exc:
        raise _not_found(f"Cannot read {uri}: {exc}") from exc

    def body() -> Iterator[bytes]:
        try:
            yield first
            yield from chunks
        finally:
            context.__exit__(None, None, None)

    return StreamingResponse(body(), media_type=media_type(uri))


def _open(uri: str, conn_id: str | None, vibedream_conn_id: str | None) -> Any:
    """A redirect for what the browser can fetch itself, else the bytes through the api-server."""
    if uri.startswith("s3://"):
        return RedirectResponse(presigned_url(uri, conn_id), status.HTTP_307_TEMPORARY_REDIRECT)
    if uri.startswith(("http://", "https://")):
        return RedirectResponse(uri, status.HTTP_307_TEMPORARY_REDIRECT)
    return _stream(uri, conn_id, vibedream_conn_id)


def _image_of(
    entry: dict[str, Any], which: str, n: int, conns: tuple[Any, ...]
) -> tuple[str | None, str | None, str | None, str]:
    """(uri, its connection, the VibeDream connection, cache tag) of an input or output of a result
    record or manifest line; ``conns`` are (input's, outputs', VibeDream) connection ids."""
    outputs = entry.get("outputs") or []
    if which == "input":
        uri, conn_id = entry.get("input"), conns[0]
    else:
        uri, conn_id = (outputs[n] if n < len(outputs) else None), conns[1]
    return uri, conn_id, conns[2], str(entry.get("prediction_id"))


def _thumbnail(uri: str | None, conn_id: str | None, vibedream_conn_id: str | None, tag: str) -> FileResponse:
    if not uri:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such image")
    try:
        path = settings.cache.get(
            f"{uri}#{tag}",
            lambda: open_chunks(
                uri, rules=settings.rules, conn_id=conn_id, http_policy=http_policy_for(vibedream_conn_id)
            ),
        )
    except SourceRefused as exc:
        raise _refused(exc) from exc
    except (OutputStorageError, OSError) as exc:
        raise _not_found(f"No thumbnail of {uri}: {exc}") from exc
    # Private: a shared cache must not hand one user's image to another.
    return FileResponse(path, media_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})


def create_app() -> FastAPI:
    app = FastAPI(title="VibeDream gallery", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/gallery", response_class=HTMLResponse)
    def gallery(
        user: User,
        dag_id: str | None = None,
        since: date | None = None,
        until: date | None = None,
        page: Annotated[int, Query(ge=1)] = 1,
    ) -> HTMLResponse:
        readable = readable_dag_ids(user)
        if dag_id and dag_id not in readable:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"Not allowed to read DAG {dag_id!r}")
        filters = queries.Filters(dag_id or None, since, until)
        rows = queries.results_page(readable, filters, page=page, per_page=PER_PAGE)
        html = pages.gallery_page(
            rows,
            queries.totals(readable, filters),
            filters,
            queries.dags_with_results(readable),
            page_number=page,
            per_page=PER_PAGE,
            root=settings.ui_root,
        )
        return HTMLResponse(html)

    @app.get("/batch", response_class=HTMLResponse)
    def batch(
        user: User,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int = -1,
        page: Annotated[int, Query(ge=1)] = 1,
    ) -> HTMLResponse:
        progress = _progress(user, dag_id, run_id, task_id, map_index)
        error = None
        try:
            lines = manifests.lines(progress)
        except (OutputStorageError, OSError, ValueError) as exc:
            lines, error = [], f"The manifest cannot be read here: {exc}"
        start = (page - 1) * PER_PAGE
        query = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index}
        html = pages.batch_page(
            pages.where(query, settings.ui_root),
            progress,
            list(enumerate(lines))[start : start + PER_PAGE],
            query=query,
            page_number=page,
            total_lines=len(lines),
            per_page=PER_PAGE,
            manifest_error=error,
        )
        return HTMLResponse(html)

    @app.get("/api/progress")
    def progress_json(
        user: User, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> JSONResponse:
        return JSONResponse(_progress(user, dag_id, run_id, task_id, map_index).to_json())

    @app.get("/thumb")
    def thumb(
        user: User,
        dag_id: str,
        run_id: str,
        task_id: str,
        which: Annotated[str, Query(pattern="^(input|output)$")],
        map_index: int = -1,
        n: Annotated[int, Query(ge=0)] = 0,
        line: Annotated[int | None, Query(ge=0)] = None,
    ) -> FileResponse:
        if line is None:  # a single image's result
            record = _record(user, dag_id, run_id, task_id, map_index, RESULT_XCOM_KEY)
            conns = tuple(record.get(f"{k}_conn_id") for k in ("input", "output", "vibedream"))
            return _thumbnail(*_image_of(record, which, n, conns))
        progress = _progress(user, dag_id, run_id, task_id, map_index)  # one image of a batch
        lines = manifests.lines(progress)
        if line >= len(lines):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "No such manifest line")
        conns = (progress.input_conn_id, progress.output_conn_id, progress.vibedream_conn_id)
        return _thumbnail(*_image_of(lines[line], which, n, conns))

    @app.get("/output")
    def output(
        user: User,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int = -1,
        n: Annotated[int, Query(ge=0)] = 0,
    ) -> Any:
        record = _record(user, dag_id, run_id, task_id, map_index, RESULT_XCOM_KEY)
        outputs = record.get("outputs") or []
        if n >= len(outputs):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "No such output")
        return _open(str(outputs[n]), record.get("output_conn_id"), record.get("vibedream_conn_id"))

    @app.get("/manifest")
    def manifest(user: User, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        progress = _progress(user, dag_id, run_id, task_id, map_index)
        if not progress.manifest:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "The batch has not written its manifest yet")
        return _open(progress.manifest, progress.output_conn_id, progress.vibedream_conn_id)

    return app


app = create_app()
