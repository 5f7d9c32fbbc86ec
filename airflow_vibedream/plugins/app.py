"""The gallery: a FastAPI app the api-server mounts at ``/vibedream`` (see :mod:`.plugin`).

Routes (all ``GET``, all behind Airflow's auth manager, see :mod:`.access`):
``/gallery`` before/after pairs, filters, cost totals; ``/batch`` one batch's progress and images;
``/thumb`` one thumbnail; ``/output`` and ``/manifest`` what the operator extra links open;
``/api/progress`` a batch's progress as JSON; ``/static/gallery.css`` the pages' stylesheet.

The security model (the README's *Security model* says it for people): records are data written by
anyone who may write XCom. The deployment's configuration alone decides what the api-server reads
(``[vibedream] gallery_roots``, each root with its own connection) and where it redirects (under a
root, presigned with the root's connection, or ``gallery_redirect_hosts``). The api-server never
fetches a URL for a record. Pages are auto-escaped templates under a Content-Security-Policy with no
script; thumbnails are made in a bounded pool of their own; every bad parameter answers 4xx, and no
answer names a server path."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from airflow_vibedream.plugins import pages, queries
from airflow_vibedream.plugins.access import readable_dag_ids, require_dag, user_dependency
from airflow_vibedream.plugins.manifests import ManifestPages
from airflow_vibedream.plugins.pages import ImageCard, LineView, Picture, TaskInstanceRef
from airflow_vibedream.plugins.roots import GalleryRoots, Location, StoreLocation
from airflow_vibedream.plugins.sources import (
    ReadBounds,
    SourceUnavailable,
    media_type,
    open_chunks,
    presigned_url,
)
from airflow_vibedream.plugins.thumbnails import Busy, NotAnImage, ThumbnailCache, ThumbnailPool
from airflow_vibedream.tasks.records import PROGRESS_XCOM_KEY, RESULT_XCOM_KEY, BatchProgress, ImageResult

log = logging.getLogger(__name__)

#: Entries per gallery page and images per batch page.
PER_PAGE = 24
#: Seconds a browser is asked to wait before asking again for a thumbnail when the pool is full.
RETRY_AFTER_SECONDS = 2
#: Every answer of the gallery: no script at all, styles and images from the gallery only, framed
#: only by Airflow's own pages.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

User = Annotated[Any, Depends(user_dependency())]
#: A DAG, run or task id: printable, bounded (Airflow's own columns hold 250 characters).
Ident = Annotated[str, Query(min_length=1, max_length=250, pattern=r"^[^\x00-\x1f\x7f]+$")]
MapIndex = Annotated[int, Query(ge=-1, le=1_000_000)]
PageNumber = Annotated[int, Query(ge=1, le=1_000_000)]
#: The last day a date filter may name (the day after it must still be a date).
LAST_DAY = date(9999, 12, 30)


class Settings:
    """The gallery's settings, read from Airflow's configuration once (``[vibedream]`` section)."""

    @staticmethod
    def _conf() -> Any:
        from airflow.providers.common.compat.sdk import conf

        return conf

    @cached_property
    def roots(self) -> GalleryRoots:
        return GalleryRoots.from_config()

    @cached_property
    def redirect_hosts(self) -> frozenset[str]:
        """Hosts (``name`` or ``name:port``, lower case) ``/output`` may redirect an http(s) output to."""
        text = self._conf().get("vibedream", "gallery_redirect_hosts", fallback="assets.vibedream.ai") or ""
        return frozenset(host.strip().lower() for host in text.split(",") if host.strip())

    @cached_property
    def image_bounds(self) -> ReadBounds:
        conf = self._conf()
        return ReadBounds(
            max_bytes=conf.getint("vibedream", "gallery_max_source_mb", fallback=512) * 1024 * 1024,
            seconds=conf.getfloat("vibedream", "gallery_read_timeout", fallback=30.0),
        )

    @cached_property
    def manifests(self) -> ManifestPages:
        conf = self._conf()
        bounds = ReadBounds(
            max_bytes=conf.getint("vibedream", "gallery_max_manifest_mb", fallback=64) * 1024 * 1024,
            seconds=conf.getfloat("vibedream", "gallery_read_timeout", fallback=30.0),
        )
        return ManifestPages(bounds, PER_PAGE)

    @cached_property
    def cache(self) -> ThumbnailCache:
        conf = self._conf()
        directory = conf.get("vibedream", "gallery_cache_dir", fallback="") or str(default_cache_dir())
        return ThumbnailCache(
            Path(directory).expanduser(),
            conf.getint("vibedream", "gallery_cache_mb", fallback=256) * 1024 * 1024,
        )

    @cached_property
    def pool(self) -> ThumbnailPool:
        return ThumbnailPool()

    @cached_property
    def ui_root(self) -> str:
        return pages.ui_root(self._conf().get("api", "base_url", fallback="") or "")


settings = Settings()


def default_cache_dir() -> Path:
    """``$AIRFLOW_HOME/vibedream-thumbnails``, AIRFLOW_HOME as Airflow itself resolved it (the
    environment variable, else ``~/airflow``): never the directory the api-server was started in."""
    import airflow.configuration

    return Path(airflow.configuration.AIRFLOW_HOME).expanduser() / "vibedream-thumbnails"


class NotServed(Exception):
    """A location the gallery does not read or redirect to (not under a root, not a listed host).

    :param reason: the rule that kept it out, in words for the reader (never a server path).
    """

    def __init__(self, reason: str = "not under a gallery root") -> None:
        super().__init__(reason)
        self.reason = reason


def _record(user: Any, ti: TaskInstanceRef, key: str) -> Any:
    require_dag(user, ti.dag_id)
    record = queries.one(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, key)
    if record is None:
        what = "result" if key == RESULT_XCOM_KEY else "batch"
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No readable VibeDream {what} for this task instance")
    return record


def _result(user: Any, ti: TaskInstanceRef) -> ImageResult:
    record = _record(user, ti, RESULT_XCOM_KEY)
    assert isinstance(record, ImageResult)
    return record


def _progress(user: Any, ti: TaskInstanceRef) -> BatchProgress:
    record = _record(user, ti, PROGRESS_XCOM_KEY)
    assert isinstance(record, BatchProgress)
    return record


def _locate(uri: str | None, dag_id: str) -> Location:
    location = settings.roots.locate(uri, dag_id)
    if location is None:
        raise NotServed(settings.roots.refusal(uri, dag_id))
    return location


def _redirect_allowed(uri: str) -> bool:
    """An http(s) URL on a host the deployment listed (exact scheme, no credentials in the URL).
    Any URL the parser cannot read (an unclosed bracket, a host that normalises to a delimiter) is
    refused, never an error."""
    # The scheme as written (urlsplit lower-cases it): a case variant is refused like any other.
    if (
        not uri.startswith(("http://", "https://"))
        or any(c.isspace() or ord(c) < 32 for c in uri)
        or "\\" in uri
    ):
        return False
    try:
        parts = urlsplit(uri)
        hostname, port = parts.hostname, parts.port
        if not hostname or parts.username or parts.password:
            return False
    except ValueError:
        return False
    hosts = settings.redirect_hosts
    return hostname in hosts or (port is not None and f"{hostname}:{port}" in hosts)


def _openable(uri: str | None, dag_id: str) -> bool:
    return settings.roots.locate(uri, dag_id) is not None or (uri is not None and _redirect_allowed(uri))


def _stream(location: Location) -> StreamingResponse:
    """The bytes at ``location``, streamed (after the first chunk, so a failure is a clean 4xx)."""
    context = open_chunks(location, settings.image_bounds)
    chunks = context.__enter__()
    try:
        first = next(chunks, b"")
    except BaseException as exc:
        context.__exit__(type(exc), exc, exc.__traceback__)
        raise

    def body() -> Iterator[bytes]:
        try:
            yield first
            yield from chunks
        finally:
            context.__exit__(None, None, None)

    kind = media_type(location.name)
    disposition = "inline" if kind.startswith("image/") else "attachment"
    return StreamingResponse(body(), media_type=kind, headers={"Content-Disposition": disposition})


#: What ``/output`` serves from a root (images), and what ``/manifest`` serves (JSON lines): a root
#: may hold other files (a page, a ledger document) that no link opens.
OUTPUT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
MANIFEST_TYPES = frozenset({"application/x-ndjson"})


def _open(uri: str | None, dag_id: str, kinds: frozenset[str]) -> Response:
    """What an extra link opens: a root's ``s3://`` object through a fresh presigned URL, another
    root's file streamed (only of the ``kinds`` the link is for), a listed host's URL through a
    redirect; nothing else."""
    location = settings.roots.locate(uri, dag_id)
    if location is not None and media_type(location.name) not in kinds:
        raise NotServed("not a kind of file this link opens")
    if isinstance(location, StoreLocation) and location.root.scheme == "s3":
        return RedirectResponse(presigned_url(location), status.HTTP_307_TEMPORARY_REDIRECT)
    if location is not None:
        return _stream(location)
    if uri is not None and _redirect_allowed(uri):
        return RedirectResponse(uri, status.HTTP_307_TEMPORARY_REDIRECT)
    if uri is not None and uri.lower().startswith(("http://", "https://")):
        raise NotServed("an http(s) URL on a host not in [vibedream] gallery_redirect_hosts")
    raise NotServed(settings.roots.refusal(uri, dag_id))


async def _thumbnail(uri: str | None, tag: str, dag_id: str) -> Response:
    location = _locate(uri, dag_id)
    key = f"{location}#{tag}"
    cache = settings.cache
    path = cache.cached(key)
    if path is None:
        bounds = settings.image_bounds
        path = await settings.pool.run(
            lambda: cache.make(key, lambda: open_chunks(location, bounds)), timeout=bounds.seconds + 10
        )
    try:
        # Read now (a thumbnail is a few KiB): a trim by another request cannot pull the file away
        # from under a response that is already on its way.
        data = path.read_bytes()
    except FileNotFoundError:
        raise SourceUnavailable("The thumbnail was just trimmed from the cache; ask again") from None
    # Private: a shared cache must not hand one user's image to another.
    return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})


def _picture(uri: str | None, dag_id: str, route: str) -> Picture:
    roots = settings.roots
    if roots.locate(uri, dag_id) is not None:
        return pages.picture(uri, True, route)
    return pages.picture(uri, False, route, refusal=roots.refusal(uri, dag_id))


def _image_card(row: queries.ResultRow) -> ImageCard:
    ti = TaskInstanceRef(row.dag_id, row.run_id, row.task_id, row.map_index, settings.ui_root)
    record = row.value
    assert isinstance(record, ImageResult)
    output = record.outputs[0] if record.outputs else None
    return ImageCard(
        ti=ti,
        record=record,
        input=_picture(record.input, ti.dag_id, ti.route("thumb", which="input")),
        output=_picture(output, ti.dag_id, ti.route("thumb", which="output")),
        open=ti.route("output") if _openable(output, ti.dag_id) else None,
        when=row.timestamp.strftime("%Y-%m-%d %H:%M:%S UTC"),
    )


def _card(row: queries.ResultRow) -> ImageCard | pages.BatchCard:
    if isinstance(row.value, BatchProgress):
        ti = TaskInstanceRef(row.dag_id, row.run_id, row.task_id, row.map_index, settings.ui_root)
        return pages.BatchCard(ti, row.value)
    return _image_card(row)


def _line_view(ti: TaskInstanceRef, number: int, entry: Any) -> LineView:
    if entry is None:
        return LineView(number, None, Picture(None), Picture(None))
    output = entry.outputs[0] if entry.outputs else None
    return LineView(
        number,
        entry,
        _picture(entry.input, ti.dag_id, ti.route("thumb", line=number, which="input")),
        _picture(output, ti.dag_id, ti.route("thumb", line=number, which="output")),
    )


def _manifest_location(progress: BatchProgress, dag_id: str) -> Location:
    """Where the batch's manifest is: under a root, in the DAG's folder, a ``.jsonl`` file."""
    if not progress.manifest:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "The batch has not written its manifest yet")
    location = _locate(progress.manifest, dag_id)
    if media_type(location.name) not in MANIFEST_TYPES:
        raise NotServed("not a .jsonl manifest")
    return location


def _add_error_handlers(app: FastAPI) -> None:
    def answer(code: int, detail: str, **headers: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=code, headers=headers or None)

    @app.exception_handler(NotServed)
    async def not_served(request: Request, exc: NotServed) -> JSONResponse:
        log.warning("VibeDream gallery: refused %s: %s", request.url.path, exc.reason)
        return answer(
            403, f"Not in a location the gallery serves: {exc.reason} (see [vibedream] gallery_roots)"
        )

    @app.exception_handler(SourceUnavailable)
    async def unavailable(request: Request, exc: SourceUnavailable) -> JSONResponse:
        log.warning("VibeDream gallery: %s: %s", request.url.path, exc)
        return answer(404, str(exc))

    @app.exception_handler(NotAnImage)
    async def not_an_image(request: Request, exc: NotAnImage) -> JSONResponse:
        log.warning("VibeDream gallery: %s: %s", request.url.path, exc)
        return answer(404, "Not an image the gallery shows")

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return answer(
            503, "Thumbnails are busy; try again shortly", **{"Retry-After": str(RETRY_AFTER_SECONDS)}
        )


def create_app() -> FastAPI:
    app = FastAPI(title="VibeDream gallery", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/static/gallery.css")
    def stylesheet() -> Response:
        css = resources.files("airflow_vibedream.plugins").joinpath("templates/gallery.css").read_text()
        return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    @app.get("/gallery", response_class=HTMLResponse)
    def gallery(
        user: User,
        dag_id: Annotated[str | None, Query(max_length=250, pattern=r"^[^\x00-\x1f\x7f]*$")] = None,
        since: Annotated[date | None, Query(le=LAST_DAY)] = None,
        until: Annotated[date | None, Query(le=LAST_DAY)] = None,
        page: PageNumber = 1,
    ) -> HTMLResponse:
        readable = readable_dag_ids(user)
        if dag_id and dag_id not in readable:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Not allowed to read this DAG")
        filters = queries.Filters(dag_id or None, since, until)
        rows, skipped = queries.results_page(readable, filters, page=page, per_page=PER_PAGE)
        html = pages.gallery_page(
            [_card(row) for row in rows],
            queries.totals(readable, filters),
            filters,
            queries.dags_with_results(readable),
            page_number=page,
            per_page=PER_PAGE,
            skipped=skipped,
        )
        return HTMLResponse(html)

    @app.get("/batch", response_class=HTMLResponse)
    def batch(
        user: User,
        dag_id: Ident,
        run_id: Ident,
        task_id: Ident,
        map_index: MapIndex = -1,
        page: PageNumber = 1,
    ) -> HTMLResponse:
        ti = TaskInstanceRef(dag_id, run_id, task_id, map_index, settings.ui_root)
        progress = _progress(user, ti)
        lines: list[LineView] = []
        error, has_next, truncated = None, False, False
        if progress.manifest:
            try:
                location = _manifest_location(progress, dag_id)
            except NotServed as refused:
                error = f"The manifest is {refused.reason} ([vibedream] gallery_roots)"
            else:
                try:
                    found = settings.manifests.page(location, progress.updated_at, page)
                except SourceUnavailable as exc:
                    error = f"The manifest cannot be read here: {exc}"
                except Busy:
                    error = "Many manifests are being read right now: this page tries again in 5 seconds"
                else:
                    lines = [_line_view(ti, number, entry) for number, entry in found.lines]
                    has_next, truncated = page * PER_PAGE < found.total, found.truncated
        html = pages.batch_page(
            ti,
            progress,
            lines,
            page_number=page,
            has_next=has_next,
            truncated=truncated,
            manifest_error=error,
        )
        return HTMLResponse(html)

    @app.get("/api/progress")
    def progress_json(
        user: User, dag_id: Ident, run_id: Ident, task_id: Ident, map_index: MapIndex = -1
    ) -> JSONResponse:
        ti = TaskInstanceRef(dag_id, run_id, task_id, map_index)
        return JSONResponse(_progress(user, ti).to_json())

    @app.get("/thumb")
    async def thumb(
        user: User,
        dag_id: Ident,
        run_id: Ident,
        task_id: Ident,
        which: Annotated[str, Query(pattern="^(input|output)$")],
        map_index: MapIndex = -1,
        n: Annotated[int, Query(ge=0, le=64)] = 0,
        line: Annotated[int | None, Query(ge=0, le=10_000_000)] = None,
    ) -> Response:
        from starlette.concurrency import run_in_threadpool

        ti = TaskInstanceRef(dag_id, run_id, task_id, map_index)
        if line is None:  # a single image's result
            record = await run_in_threadpool(_result, user, ti)
            uris, tag = [record.input] if which == "input" else record.outputs, record.prediction_id
        else:  # one image of a batch
            progress = await run_in_threadpool(_progress, user, ti)
            location = _manifest_location(progress, dag_id)
            entry = await run_in_threadpool(settings.manifests.line, location, progress.updated_at, line)
            if entry is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, "No such manifest line")
            uris, tag = (
                [entry.input] if which == "input" else (entry.outputs or []),
                entry.prediction_id or "",
            )
        index = 0 if which == "input" else n
        if index >= len(uris):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "No such image")
        return await _thumbnail(uris[index], tag, dag_id)

    @app.get("/output")
    def output(
        user: User,
        dag_id: Ident,
        run_id: Ident,
        task_id: Ident,
        map_index: MapIndex = -1,
        n: Annotated[int, Query(ge=0, le=64)] = 0,
    ) -> Response:
        record = _result(user, TaskInstanceRef(dag_id, run_id, task_id, map_index))
        if n >= len(record.outputs):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "No such output")
        return _open(record.outputs[n], dag_id, OUTPUT_TYPES)

    @app.get("/manifest")
    def manifest(
        user: User, dag_id: Ident, run_id: Ident, task_id: Ident, map_index: MapIndex = -1
    ) -> Response:
        progress = _progress(user, TaskInstanceRef(dag_id, run_id, task_id, map_index))
        _manifest_location(progress, dag_id)
        return _open(progress.manifest, dag_id, MANIFEST_TYPES)

    return app


app = create_app()
