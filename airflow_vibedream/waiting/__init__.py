"""Waiting for predictions: decisions about when and how much to poll, with no I/O of their own
(the poll scheduler in :mod:`airflow_vibedream.client.poller` feeds them)."""
