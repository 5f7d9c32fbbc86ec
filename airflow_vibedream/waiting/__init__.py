"""Waiting for predictions: the whole wait, for the triggerer and for the worker, in one place.

- :mod:`~airflow_vibedream.waiting.decisions`: what each answer or error means for one prediction's
  wait (finished, poll again when, retry after a back-off, re-read the key, stop): the one decision
  object every loop feeds;
- :mod:`~airflow_vibedream.waiting.scheduler`: the triggerer's loop: one poll scheduler per event loop
  that both triggers await (one heap of due polls, one future per wait);
- :mod:`~airflow_vibedream.waiting.blocking`: the worker's loop: the operator's wait and the batch's
  (one heap, a bounded set of threads);
- :mod:`~airflow_vibedream.waiting.durations`: learned job durations, and when to poll from them;
- :mod:`~airflow_vibedream.waiting.window`: how many polls may be in flight (follows the API);
- :mod:`~airflow_vibedream.waiting.gate_core` and :mod:`~airflow_vibedream.waiting.gate`: the outage
  gate (a circuit breaker per API and loop or process) and the patient poll through it;
- :mod:`~airflow_vibedream.waiting.status`: status-change lines for the task's log.

The decisions (decisions, durations, window, gate core) do no I/O and take the clock as an
argument, so they are tested on tables of cases; the two loops and the patient poll feed them.
"""
