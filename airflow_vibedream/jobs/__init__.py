"""The jobs: what is asked, what was paid for, and the records that say so (built on
:mod:`airflow_vibedream.client` and :mod:`airflow_vibedream.files`; Airflow only through the task's
state store handed in).

- :mod:`.fingerprint`: what was asked (``JobSpec``): a later try adopts a job only for the same ask;
- :mod:`.identity`: an input's content identity (SHA-256 of its bytes, or an S3 ETag) and ledger key;
- :mod:`.signing`: the HMAC every record that decides adoption or reuse carries;
- :mod:`.submissions`: a task instance's records (``task_state_store``; XCom across a deferral below 3.3);
- :mod:`.single`: one prediction: reconnect to a matching recorded job, else submit and record it;
- :mod:`.batch`: many predictions: interruptible submits whose every returned id is recorded first;
- :mod:`.budget`: the batch's cost estimate and limit;
- :mod:`.ledger`: pay once per image, ever (documents beside the outputs, the rule, the batch's use).
"""
