"""The VibeDream API itself, with no Airflow import: the worker, the triggerer, scripts and the
benchmarks all use it. One concept per module:

- :mod:`~airflow_vibedream.client.request`: what is sent, and the checks before sending it;
- :mod:`~airflow_vibedream.client.models`: what comes back (``Prediction``);
- :mod:`~airflow_vibedream.client.settings`: client settings and the retry policy;
- :mod:`~airflow_vibedream.client.calls`: building a call and mapping its answer to a result or error;
- :mod:`~airflow_vibedream.client.sync` and :mod:`~airflow_vibedream.client.aio`: the two clients.

Waiting for a prediction (what each answer means, when to poll, the outage gate, the triggerer's
scheduler and the worker's wait) is :mod:`airflow_vibedream.waiting`, built on these clients.

Errors live in :mod:`airflow_vibedream.errors` and are imported from there.
"""

from __future__ import annotations

from airflow_vibedream.client.aio import AsyncVibeDreamClient
from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.request import UpscaleRequest
from airflow_vibedream.client.settings import ClientSettings, RetryPolicy
from airflow_vibedream.client.sync import VibeDreamClient

__all__ = [
    "AsyncVibeDreamClient",
    "ClientSettings",
    "Prediction",
    "RetryPolicy",
    "UpscaleRequest",
    "VibeDreamClient",
]
