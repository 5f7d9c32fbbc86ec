"""The one job lifecycle that every operator, the sensor and the triggers share:

    validate -> fingerprint -> reconnect or submit-and-record -> wait -> read the event -> finish

- :mod:`.validation`: every parameter checked the same way, at parse time and after rendering;
- :mod:`.fingerprint`: what was asked (``JobSpec``), so a later try adopts a job only for the same ask;
- :mod:`.store`: submissions recorded in ``task_state_store`` (XCom across a deferral below 3.3);
- :mod:`.job`: one prediction: reconnect to a matching stored one, else submit and record it at once;
- :mod:`.batch`: many predictions: interruptible submits whose every returned id is recorded;
- :mod:`.events`: the trigger event, written and read in one place, typed errors included;
- :mod:`.rules`: the one permanent-error rule (which failures no Airflow retry may repeat);
- :mod:`.outputs`: where outputs are stored, the same way for one image and for a batch;
- :mod:`.verify`: what an output must be (format, long edge, aspect ratio) before it counts;
- :mod:`.manifest`: the batch manifest's lines and where it is written;
- :mod:`.progress`: a batch's progress published for the gallery while it waits;
- :mod:`.records`: the typed records the operators leave for Airflow's UI (XCom), parsed as data;
- :mod:`.settle`: how long a trigger holds its event after the deferral (an Airflow race).

Why not Airflow 3.3's ``ResumableJobMixin`` (re-exported by ``common.compat``)? Its decision reads
one external id and asks only "active, succeeded or not": it cannot refuse a stored job made for
another input (the fingerprint), cannot resubmit a completed job whose outputs expired, has no
"submission state unknown" outcome, holds one id per task (the batch holds thousands), and its
``poll_until_complete`` returns nothing, while ours defers or returns the terminal prediction. Its
persistence is ``task_state_store.set`` after the submit, which :class:`.job.SingleJob` does too,
under the same key discipline (one key, never renamed).
"""
