"""Waiting for predictions in the triggerer: one place for the whole wait.

- :mod:`~airflow_vibedream.waiting.scheduler`: the per-loop poll scheduler every trigger awaits (one
  heap of due polls, one future per wait);
- :mod:`~airflow_vibedream.waiting.durations`: learned job durations, and when to poll from them;
- :mod:`~airflow_vibedream.waiting.window`: how many polls may be in flight (follows the API);
- :mod:`~airflow_vibedream.waiting.gate_core`: the outage gate's decisions (the circuit breaker).

The decisions (durations, window, gate core) do no I/O and take the clock as an argument, so they
are tested on tables of cases; the scheduler and :mod:`airflow_vibedream.client.gate` feed them.
"""
