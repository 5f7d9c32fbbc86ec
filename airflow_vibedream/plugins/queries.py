"""The gallery's reads from Airflow's metadata database: the operators' result and progress XComs,
for the DAGs a user may read, newest first, filtered by DAG and date, with cost totals.

Every value is parsed through its record model (:mod:`airflow_vibedream.tasks.records`): one
that does not parse is skipped, logged and counted, never shown in part and never a failed page."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from airflow_vibedream.tasks.records import (
    PROGRESS_XCOM_KEY,
    RESULT_XCOM_KEY,
    BatchProgress,
    ImageResult,
)

log = logging.getLogger(__name__)

#: The largest record read (as JSON text): an operator's record is well under 4 KiB.
MAX_RECORD_BYTES = 64 * 1024

#: Result kinds.
IMAGE = "image"
BATCH = "batch"
_KIND_OF_KEY = {RESULT_XCOM_KEY: IMAGE, PROGRESS_XCOM_KEY: BATCH}


@dataclass(frozen=True)
class ResultRow:
    """One gallery entry: a single image's result or a batch's progress.

    :param kind: ``image`` or ``batch``.
    :param dag_id: its DAG.
    :param run_id: its run.
    :param task_id: its task.
    :param map_index: its map index (-1: not mapped).
    :param timestamp: when the XCom was written.
    :param value: the parsed record.
    """

    kind: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    timestamp: datetime
    value: ImageResult | BatchProgress

    @property
    def cost_cents(self) -> float:
        return self.value.cost_cents or 0.0


@dataclass(frozen=True)
class Filters:
    """What the user asked to see.

    :param dag_id: one DAG, or None for every readable one.
    :param since: first day (UTC), inclusive.
    :param until: last day (UTC), inclusive.
    """

    dag_id: str | None = None
    since: date | None = None
    until: date | None = None


def bounded_value() -> Any:
    """The XCom value, or NULL when its JSON text is over :data:`MAX_RECORD_BYTES`: a padded record
    is never loaded, parsed or kept (it is counted as unreadable)."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import Text, case, cast, func, null

    size = func.length(cast(XComModel.value, Text))
    return case((size <= MAX_RECORD_BYTES, XComModel.value), else_=null()).label("value")


def _rows(readable: set[str], filters: Filters, *, limit: int | None = None, offset: int = 0) -> Any:
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    dag_ids = readable if filters.dag_id is None else readable & {filters.dag_id}
    query = select(
        XComModel.key,
        XComModel.dag_id,
        XComModel.run_id,
        XComModel.task_id,
        XComModel.map_index,
        XComModel.timestamp,
        bounded_value(),
    ).where(XComModel.key.in_(list(_KIND_OF_KEY)), XComModel.dag_id.in_(sorted(dag_ids)))
    if filters.since is not None:
        query = query.where(XComModel.timestamp >= datetime.combine(filters.since, time.min, timezone.utc))
    if filters.until is not None:
        end = datetime.combine(filters.until + timedelta(days=1), time.min, timezone.utc)
        query = query.where(XComModel.timestamp < end)
    query = query.order_by(XComModel.timestamp.desc(), XComModel.task_id, XComModel.map_index)
    if limit is not None:
        query = query.limit(limit).offset(offset)
    return query


def _parsed(row: Any, model: type[ImageResult] | type[BatchProgress]) -> ImageResult | BatchProgress | None:
    from airflow.models.xcom import XComModel

    try:
        value = XComModel.deserialize_value(row)
    except Exception:  # not JSON at all: written by something that is not an operator
        value = None
    record = model.parse(value)
    if record is None:
        log.warning(
            "VibeDream gallery: skipped an unreadable %s record of %s/%s/%s[%s]",
            getattr(row, "key", "?"),
            getattr(row, "dag_id", "?"),
            getattr(row, "run_id", "?"),
            getattr(row, "task_id", "?"),
            getattr(row, "map_index", "?"),
        )
    return record


def _to_row(row: Any) -> ResultRow | None:
    value = _parsed(row, ImageResult if row.key == RESULT_XCOM_KEY else BatchProgress)
    if value is None:
        return None
    return ResultRow(
        kind=_KIND_OF_KEY[row.key],
        dag_id=row.dag_id,
        run_id=row.run_id,
        task_id=row.task_id,
        map_index=row.map_index,
        timestamp=row.timestamp,
        value=value,
    )


def results_page(
    readable: set[str], filters: Filters, *, page: int, per_page: int
) -> tuple[list[ResultRow], int]:
    """One page of entries, newest first, and how many of the page's records were unreadable."""
    from airflow.utils.session import create_session

    if not readable:
        return [], 0
    with create_session() as session:
        rows = session.execute(_rows(readable, filters, limit=per_page, offset=(page - 1) * per_page)).all()
    entries = [entry for row in rows if (entry := _to_row(row)) is not None]
    return entries, len(rows) - len(entries)


@dataclass(frozen=True)
class Totals:
    """Entries and cost over the whole filter (not one page).

    :param entries: how many entries match.
    :param cost_by_dag: cents per DAG.
    :param cost_by_day: cents per UTC day (ISO date).
    """

    entries: int
    cost_by_dag: dict[str, float]
    cost_by_day: dict[str, float]

    @property
    def cost(self) -> float:
        return sum(self.cost_by_dag.values())


def totals(readable: set[str], filters: Filters) -> Totals:
    """Counts and cost totals per DAG and per day over every matching entry."""
    from airflow.utils.session import create_session

    by_dag: dict[str, float] = defaultdict(float)
    by_day: dict[str, float] = defaultdict(float)
    entries = 0
    if readable:
        with create_session() as session:
            # Streamed in chunks: thousands of small rows, never all in memory at once.
            for row in session.execute(_rows(readable, filters).execution_options(yield_per=500)):
                entry = _to_row(row)
                if entry is None:
                    continue
                entries += 1
                by_dag[entry.dag_id] += entry.cost_cents
                by_day[entry.timestamp.date().isoformat()] += entry.cost_cents
    return Totals(entries, dict(by_dag), dict(sorted(by_day.items(), reverse=True)))


def one(
    dag_id: str, run_id: str, task_id: str, map_index: int, key: str
) -> ImageResult | BatchProgress | None:
    """The record one task instance left under ``key``, parsed, or None (none, or unreadable)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.execute(
            select(
                XComModel.key,
                XComModel.dag_id,
                XComModel.run_id,
                XComModel.task_id,
                XComModel.map_index,
                bounded_value(),
            ).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key == key,
            )
        ).first()
    if row is None:
        return None
    return _parsed(row, ImageResult if key == RESULT_XCOM_KEY else BatchProgress)


def dags_with_results(readable: set[str]) -> list[str]:
    """The readable DAGs that have gallery entries (for the DAG filter)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    if not readable:
        return []
    with create_session() as session:
        found = session.scalars(
            select(XComModel.dag_id)
            .where(XComModel.key.in_(list(_KIND_OF_KEY)), XComModel.dag_id.in_(sorted(readable)))
            .distinct()
        ).all()
    return sorted(found)
