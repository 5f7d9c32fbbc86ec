"""A DAG whose task instances only carry records written through the REST API by the hostile-records
tests (XCom needs a task instance to belong to): 200 tasks that do nothing."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG(dag_id="vibedream_hostile", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    for number in range(200):
        EmptyOperator(task_id=f"r{number}")
