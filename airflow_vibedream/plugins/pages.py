"""The gallery's HTML: server-rendered, no script, no CDN asset (it works on a closed network),
every value escaped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode, urlsplit

from airflow_vibedream.plugins.queries import BATCH, Filters, ResultRow, Totals
from airflow_vibedream.plugins.records import FINISHED, BatchProgress

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px;color:#1f2937;background:#fff}
h1{font-size:20px;margin:0 0 12px} h2{font-size:15px;margin:16px 0 8px}
form.filters{display:flex;gap:12px;align-items:end;flex-wrap:wrap;margin-bottom:12px}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#4b5563}
.totals{display:flex;gap:24px;flex-wrap:wrap;font-size:13px}
.totals table{border-collapse:collapse} .totals td,.totals th{padding:2px 8px;text-align:left}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px}
figure{margin:0;border:1px solid #e5e7eb;border-radius:8px;padding:8px;background:#fafafa}
.pair{display:flex;gap:6px;align-items:center;justify-content:center}
.pair img{width:150px;height:150px;object-fit:contain;background:#eee;border-radius:4px}
.arrow{color:#7c3aed;font-weight:bold}
figcaption{font-size:12px;margin-top:6px;line-height:1.5}
figcaption a{color:#7c3aed}
.bar{height:10px;background:#e5e7eb;border-radius:5px;overflow:hidden;margin:6px 0}
.bar div{height:100%;background:#7c3aed}
.failed{color:#b91c1c} nav.pages{margin:12px 0;display:flex;gap:12px}
.muted{color:#6b7280}
"""


def page(title: str, body: str, *, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def ui_root(base_url: str) -> str:
    """The path Airflow's UI is served under (``[api] base_url``'s path)."""
    return urlsplit(base_url).path.rstrip("/") if base_url else ""


def task_link(root: str, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    mapped = f"/mapped/{map_index}" if map_index >= 0 else ""
    return f"{root}/dags/{dag_id}/runs/{run_id}/tasks/{task_id}{mapped}"


def where(row: ResultRow | Mapping[str, Any], root: str) -> str:
    """DAG / run / task, each linking back into Airflow's UI (the whole window, not the frame)."""
    if isinstance(row, ResultRow):
        dag_id, run_id, task_id, map_index = row.dag_id, row.run_id, row.task_id, row.map_index
    else:
        dag_id, run_id, task_id, map_index = (row[k] for k in ("dag_id", "run_id", "task_id", "map_index"))
    label = task_id + (f"[{map_index}]" if map_index >= 0 else "")
    return (
        f'<a target="_top" href="{escape(f"{root}/dags/{dag_id}")}">{escape(dag_id)}</a> / '
        f'<a target="_top" href="{escape(f"{root}/dags/{dag_id}/runs/{run_id}")}">{escape(run_id)}</a> / '
        f'<a target="_top" href="{escape(task_link(root, dag_id, run_id, task_id, map_index))}">'
        f"{escape(label)}</a>"
    )


def ti_query(row: ResultRow, **extra: Any) -> str:
    return urlencode(
        {"dag_id": row.dag_id, "run_id": row.run_id, "task_id": row.task_id, "map_index": row.map_index}
        | {key: value for key, value in extra.items() if value is not None}
    )


def human_bytes(size: Any) -> str:
    if not isinstance(size, int):
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def cents(value: Any) -> str:
    return f"{value:g}¢" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def duration(record: Mapping[str, Any]) -> str:
    try:
        started = datetime.fromisoformat(str(record["created_at"]))
        ended = datetime.fromisoformat(str(record["completed_at"]))
    except (KeyError, TypeError, ValueError):
        return "?"
    return f"{(ended - started).total_seconds():.1f}s"


def image_card(row: ResultRow, root: str) -> str:
    record = row.value
    files = record.get("files") or []
    first = files[0] if files and isinstance(files[0], Mapping) else {}
    size = f"{first.get('width')}x{first.get('height')}" if first.get("width") else "?"
    details = " · ".join(
        escape(str(part))
        for part in (
            record.get("target_resolution") or "?",
            size,
            (first.get("format") or record.get("output_format") or "?"),
            human_bytes(first.get("bytes")),
            cents(record.get("cost_cents")),
            duration(record),
        )
    )
    return (
        f'<figure data-kind="image" data-prediction="{escape(str(record.get("prediction_id")))}">'
        f'<a class="pair" target="_blank" href="output?{escape(ti_query(row))}">'
        f'<img loading="lazy" alt="input" src="thumb?{escape(ti_query(row, which="input"))}">'
        f'<span class="arrow">→</span>'
        f'<img loading="lazy" alt="output" src="thumb?{escape(ti_query(row, which="output"))}"></a>'
        f"<figcaption>{details}<br>{where(row, root)}<br>"
        f'<span class="muted">{escape(row.timestamp.strftime("%Y-%m-%d %H:%M:%S UTC"))}</span>'
        "</figcaption></figure>"
    )


def progress_block(progress: BatchProgress) -> str:
    share = progress.done / progress.jobs if progress.jobs else 1.0
    state = "finished" if progress.state == FINISHED else "running"
    images = (
        f" · {progress.completed_images}/{progress.images} images stored"
        if progress.completed_images is not None
        else f" · {progress.images} images"
    )
    failed = f'<span class="failed">{progress.failed} failed</span>' if progress.failed else "0 failed"
    unsubmitted = f" · {progress.unsubmitted} not waited for" if progress.unsubmitted else ""
    return (
        f'<div class="progress" data-state="{state}" data-done="{progress.done}" '
        f'data-jobs="{progress.jobs}" data-failed="{progress.failed}">'
        f'<div class="bar"><div style="width:{share * 100:.1f}%"></div></div>'
        f"{progress.done}/{progress.jobs} jobs done · {failed}{unsubmitted}{images} · "
        f"{cents(progress.cost_cents)} so far · {state}</div>"
    )


def batch_card(row: ResultRow, root: str) -> str:
    progress = BatchProgress.from_json(row.value)
    if progress is None:
        return ""
    return (
        f'<figure data-kind="batch"><a href="batch?{escape(ti_query(row))}">Batch of {progress.images} '
        f"images ({escape(str(progress.target_resolution))}, {escape(str(progress.output_format))})</a>"
        f"{progress_block(progress)}<figcaption>{where(row, root)}</figcaption></figure>"
    )


def totals_block(totals: Totals) -> str:
    def table(title: str, items: Iterable[tuple[str, float]]) -> str:
        body = "".join(f"<tr><td>{escape(k)}</td><td>{cents(v)}</td></tr>" for k, v in items)
        return f"<table><tr><th>{escape(title)}</th><th>cost</th></tr>{body}</table>"

    return (
        f'<section class="totals"><div><b data-testid="entries">{totals.entries}</b> results · '
        f'<b data-testid="total-cost">{cents(totals.cost)}</b> in all</div>'
        f"{table('DAG', sorted(totals.cost_by_dag.items()))}{table('day (UTC)', totals.cost_by_day.items())}"
        "</section>"
    )


def gallery_page(
    rows: list[ResultRow],
    totals: Totals,
    filters: Filters,
    dag_ids: list[str],
    *,
    page_number: int,
    per_page: int,
    root: str,
) -> str:
    options = "".join(
        f'<option value="{escape(d)}"{" selected" if d == filters.dag_id else ""}>{escape(d)}</option>'
        for d in dag_ids
    )
    form = (
        '<form class="filters" method="get">'
        f'<label>DAG<select name="dag_id"><option value="">all DAGs</option>{options}</select></label>'
        f'<label>From<input type="date" name="since" value="{filters.since or ""}"></label>'
        f'<label>To<input type="date" name="until" value="{filters.until or ""}"></label>'
        "<button>Filter</button></form>"
    )
    cards = "".join(batch_card(row, root) if row.kind == BATCH else image_card(row, root) for row in rows)
    base = {"dag_id": filters.dag_id, "since": filters.since, "until": filters.until}
    base = {k: v for k, v in base.items() if v}
    nav = []
    if page_number > 1:
        nav.append(f'<a href="?{escape(urlencode(base | {"page": page_number - 1}))}">← newer</a>')
    if page_number * per_page < totals.entries:
        nav.append(f'<a href="?{escape(urlencode(base | {"page": page_number + 1}))}">older →</a>')
    pages = max(1, -(-totals.entries // per_page))
    empty = "" if rows else '<p class="muted">No VibeDream results here yet.</p>'
    return page(
        "VibeDream gallery",
        f"<h1>VibeDream gallery</h1>{form}{totals_block(totals)}<h2>Before / after</h2>"
        f'<div class="grid">{cards}</div>{empty}'
        f'<nav class="pages">{"".join(nav)}<span class="muted">page {page_number} of {pages}</span></nav>',
    )


def batch_page(
    where_html: str,
    progress: BatchProgress,
    lines: Sequence[tuple[int, Mapping[str, Any]]],
    *,
    query: dict[str, Any],
    page_number: int,
    total_lines: int,
    per_page: int,
    manifest_error: str | None,
) -> str:
    cards = []
    for number, line in lines:
        status = str(line.get("status"))
        ok = status == "completed"
        input_src = escape(urlencode(query | {"line": number, "which": "input"}))
        output_src = escape(urlencode(query | {"line": number, "which": "output"}))
        thumbs = f'<img loading="lazy" alt="input" src="thumb?{input_src}"><span class="arrow">→</span>' + (
            f'<img loading="lazy" alt="output" src="thumb?{output_src}">'
            if ok
            else f'<span class="failed">{escape(status)}</span>'
        )
        reason = line.get("error")
        error = f'<br><span class="failed">{escape(str(reason))}</span>' if reason else ""
        cards.append(
            f'<figure data-kind="batch-image"><div class="pair">{thumbs}</div><figcaption>'
            f"#{number} {escape(str(line.get('input')))} · {cents(line.get('cost_cents'))}{error}"
            "</figcaption></figure>"
        )
    nav = []
    if page_number > 1:
        nav.append(f'<a href="?{escape(urlencode(query | {"page": page_number - 1}))}">← previous</a>')
    if page_number * per_page < total_lines:
        nav.append(f'<a href="?{escape(urlencode(query | {"page": page_number + 1}))}">next →</a>')
    running = progress.state != FINISHED
    note = (
        '<p class="muted">Running: this page refreshes every 5 seconds.</p>'
        if running
        else (f'<p class="failed">{escape(manifest_error)}</p>' if manifest_error else "")
    )
    return page(
        "VibeDream batch",
        f"<h1>VibeDream batch</h1><p>{where_html}</p>{progress_block(progress)}{note}"
        f'<p><a target="_blank" href="manifest?{escape(urlencode(query))}">manifest</a> · '
        f'<a href="gallery">gallery</a></p><div class="grid">{"".join(cards)}</div>'
        f'<nav class="pages">{"".join(nav)}</nav>',
        refresh=5 if running else None,
    )
