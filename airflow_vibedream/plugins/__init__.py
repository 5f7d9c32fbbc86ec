"""The gallery: an Airflow plugin whose FastAPI app the api-server mounts at ``/vibedream``.

Loaded only by the api-server, through the ``airflow.plugins`` entry point. Nothing imports this
package but that entry point: the operators' extra links live in :mod:`airflow_vibedream.links` and
the records the gallery reads in :mod:`airflow_vibedream.tasks.records`.
"""
