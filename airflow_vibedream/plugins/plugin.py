"""The Airflow plugin: the gallery app on the api-server, a "VibeDream gallery" entry in the
navigation (Browse), embedded in Airflow's UI."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_vibedream.links import URL_PREFIX


class _GalleryApp:
    """``fastapi_apps``, made when read. Every Airflow process loads plugins (each task's process
    too); only the api-server reads this, so only it pays for importing the app (seconds)."""

    def __get__(self, instance: object, owner: type | None = None) -> list[dict[str, Any]]:
        from airflow_vibedream.plugins.app import app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "VibeDream gallery"}]


class VibeDreamPlugin(AirflowPlugin):
    """Registered through the ``airflow.plugins`` entry point of this package."""

    name = "vibedream"
    fastapi_apps = _GalleryApp()  # type: ignore[assignment,unused-ignore]
    external_views = [
        {
            "name": "VibeDream gallery",
            "href": f"{URL_PREFIX.lstrip('/')}/gallery",  # relative: works under a base path too
            "destination": "nav",
            "category": "browse",
            "url_route": "vibedream-gallery",
        }
    ]
    # The operators' extra links need no registration here: Airflow 3 stores each link's URL in an
    # XCom (see .links), which the api-server reads by the link's name.
