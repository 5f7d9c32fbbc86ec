"""Crash-safe resume: the submitted prediction is remembered in Airflow's ``task_state_store``
(Airflow 3.3+), which outlives the try. A retry after a killed worker, a deferral timeout or a lost
triggerer finds the prediction there and reconnects to it instead of paying for a second job.

Below Airflow 3.3 there is no ``task_state_store``: every try submits anew, as before, and the
operator says so once in the task log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: The task_state_store key. Renaming it would make in-flight retries forget their prediction.
STATE_KEY = "vibedream_prediction"


@dataclass(frozen=True)
class StoredSubmission:
    """What a later try needs to reconnect: the id, and the cost only the submit answer states.

    :param prediction_id: the submitted prediction.
    :param cost_cents: the submit answer's cost.
    :param model_id: the model it was submitted to (a changed task must not adopt another's job).
    """

    prediction_id: str
    cost_cents: int | None
    model_id: str

    def to_json(self) -> dict[str, Any]:
        return {"prediction_id": self.prediction_id, "cost_cents": self.cost_cents, "model_id": self.model_id}

    @classmethod
    def from_json(cls, value: Any) -> StoredSubmission | None:
        if not isinstance(value, dict) or not isinstance(value.get("prediction_id"), str):
            return None
        cost = value.get("cost_cents")
        return cls(
            value["prediction_id"], cost if isinstance(cost, int) else None, str(value.get("model_id", ""))
        )


def load_submission(context: Context, log: logging.Logger | Any) -> StoredSubmission | None:
    """The prediction an earlier try stored, if any (called once per try, so it warns once)."""
    store = context.get("task_state_store")  # type: ignore[attr-defined]
    if store is None:
        log.warning(
            "task_state_store is not available (Airflow < 3.3): a retry of this task cannot reconnect to "
            "its prediction and will submit a new one"
        )
        return None
    return StoredSubmission.from_json(store.get(STATE_KEY))


def save_submission(context: Context, submission: StoredSubmission) -> None:
    store = context.get("task_state_store")  # type: ignore[attr-defined]
    if store is not None:
        store.set(STATE_KEY, submission.to_json())
