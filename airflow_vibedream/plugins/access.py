"""Who may see what: Airflow's own auth manager decides, as for the core API.

The user comes from the same credentials the UI sends (the JWT cookie, or a bearer token), read by
Airflow's own ``get_user`` dependency: no token answers 401, an invalid one 403. A user sees the
images of the DAGs the auth manager lets them read (``GET`` on the DAG) and nothing else; asking
for another DAG's image, link or batch answers 403 with no bytes."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status


def readable_dag_ids(user: Any) -> set[str]:
    """The DAG ids ``user`` may read, as the configured auth manager says (teams included)."""
    from airflow.api_fastapi.app import get_auth_manager

    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def require_dag(user: Any, dag_id: str) -> None:
    """403 unless ``user`` may read ``dag_id``."""
    if dag_id not in readable_dag_ids(user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"Not allowed to read DAG {dag_id!r}")


def user_dependency() -> Any:
    """Airflow's ``get_user`` FastAPI dependency (401 without credentials, 403 when invalid)."""
    from airflow.api_fastapi.core_api.security import get_user

    return get_user
