"""The Airflow-aware layer the operators, the sensor and the triggers share (built on
:mod:`airflow_vibedream.jobs`, :mod:`airflow_vibedream.files` and :mod:`airflow_vibedream.waiting`).

One image, from ``execute`` to a verified stored file, and the module that does each step:

1. check every parameter: :mod:`.validation` (parse time and after rendering);
2. what is asked: :mod:`airflow_vibedream.jobs.fingerprint` (``JobSpec``);
3. the ledger's say (reuse, reconnect, unknown, known bad, new):
   :mod:`airflow_vibedream.jobs.ledger.decision` (its documents:
   :mod:`airflow_vibedream.jobs.ledger.documents`);
4. reconnect to a recorded job or submit and record it at once: :mod:`airflow_vibedream.jobs.single`
   (records: :mod:`airflow_vibedream.jobs.submissions`); a batch: :mod:`airflow_vibedream.jobs.batch`
   and :mod:`airflow_vibedream.jobs.ledger.batch`;
5. wait: :mod:`airflow_vibedream.waiting.blocking` in the worker, the triggers'
   :mod:`airflow_vibedream.waiting.scheduler` in the triggerer; the event read back by :mod:`.events`;
6. store and verify the outputs: :mod:`airflow_vibedream.files.outputs` (names, where), written by
   :mod:`airflow_vibedream.files.storage`, checked by :mod:`airflow_vibedream.files.verify`;
7. a batch's end: :mod:`.batch_finish` (a manifest line per image, :mod:`.manifest`; the dataset's
   index, :mod:`.dataset`), the worker-side wait of a batch: :mod:`.batch_wait`.

Around them: :mod:`.rules` (which failures no Airflow retry may repeat), :mod:`.records` (the typed
records the operators leave for Airflow's UI), :mod:`.progress` (a batch's progress for the gallery),
:mod:`.settle` (how long a trigger holds its event after the deferral: an Airflow race).

Why not Airflow 3.3's ``ResumableJobMixin`` (re-exported by ``common.compat``)? Its decision reads
one external id and asks only "active, succeeded or not": it cannot refuse a stored job made for
another input (the fingerprint), cannot resubmit a completed job whose outputs expired, has no
"submission state unknown" outcome, holds one id per task (the batch holds thousands), and its
``poll_until_complete`` returns nothing, while ours defers or returns the terminal prediction. Its
persistence is ``task_state_store.set`` after the submit, which
:class:`airflow_vibedream.jobs.single.SingleJob` does too, under the same key discipline (one key,
never renamed).
"""
