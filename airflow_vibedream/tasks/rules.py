"""The one permanent-error rule, for ``execute``, ``execute_complete``, the sensor and the batch.

Permanent: bad input (400/422 and local validation), a refused key (401/403), something that does
not exist (404), bad configuration, a ``failed`` prediction, a complete output that is not what was
asked (its job's output will not change), and a submit whose outcome is unknown
(a retry could create, and bill, a second job). They fail the task at once, with no retry.
Everything else (429, 5xx, network, deadlines, unreadable poll answers) is transient: Airflow's
retries may repeat the try, which reconnects to the recorded prediction instead of paying again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_vibedream.errors import PERMANENT_ERRORS, input_is_bad, is_permanent

__all__ = ["PERMANENT_ERRORS", "input_is_bad", "is_permanent", "permanent_errors_fail_the_task"]


@contextmanager
def permanent_errors_fail_the_task() -> Iterator[None]:
    """Turn a permanent error into ``AirflowFailException`` (no retry); let the rest through."""
    try:
        yield
    except PERMANENT_ERRORS as exc:
        raise AirflowFailException(str(exc)) from exc
