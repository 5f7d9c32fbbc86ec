"""What the Airflow UI shows of VibeDream: operator extra links and the gallery (an Airflow plugin).

``records`` and ``links`` are light (operators import them); the gallery app and its parts are
loaded only by the api-server, through the ``airflow.plugins`` entry point.
"""
