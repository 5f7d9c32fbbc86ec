"""What comes back: the ``Prediction`` model, parsed from the API's camelCase JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from airflow_vibedream.constants import STATUS_COMPLETED, STATUS_FAILED, TERMINAL_STATUSES
from airflow_vibedream.errors import VibeDreamAnswerMismatchError, VibeDreamProtocolError


def shorten(value: Any, limit: int = 300) -> str:
    """A short excerpt of an answer for an error message (never the whole of a hostile body)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Prediction:
    """One prediction as the API reports it (submit answer or poll answer).

    :param id: the prediction's UUID.
    :param status: ``processing``, ``completed`` or ``failed`` (an unknown status counts as running).
    :param model_id: the model that ran it (absent from the submit answer).
    :param outputs: download URLs (or base64 strings) when completed, else None.
    :param error: the API's error text when failed.
    :param created_at: ISO 8601 submit time.
    :param completed_at: ISO 8601 finish time, None while processing.
    :param cost_cents: the price of the run, as the submit answer states it.
    :param status_url: where the API says the prediction can be polled.
    """

    id: str
    status: str
    model_id: str | None = None
    model_name: str | None = None
    outputs: list[str] | None = None
    error: str | None = None
    created_at: str | None = None
    completed_at: str | None = None
    cost_cents: int | None = None
    status_url: str | None = None

    @classmethod
    def from_api(cls, body: Any) -> Prediction:
        """Parse the API's camelCase JSON; raise :class:`VibeDreamProtocolError` if it is not one."""
        if (
            not isinstance(body, Mapping)
            or not isinstance(body.get("id"), str)
            or not body["id"]
            or not isinstance(body.get("status"), str)
            or not body["status"]
        ):
            raise VibeDreamProtocolError(
                f"VibeDream answered with something that is not a prediction: {shorten(body)}"
            )
        for name in ("modelId", "modelName", "error", "createdAt", "completedAt", "statusUrl"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise VibeDreamProtocolError(
                    f"VibeDream answered with a {name} that is not text: {shorten(body[name])}"
                )
        outputs = body.get("outputs")
        if outputs is not None and (
            not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs)
        ):
            raise VibeDreamProtocolError(
                f"VibeDream answered with outputs that are not texts: {shorten(outputs)}"
            )
        cost = body.get("costCents")
        if cost is not None and (
            isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost)
        ):
            raise VibeDreamProtocolError(
                f"VibeDream answered with a costCents that is no price: {shorten(cost)}"
            )
        return cls(
            id=str(body["id"]),
            status=str(body["status"]),
            model_id=body.get("modelId"),
            model_name=body.get("modelName"),
            outputs=list(outputs) if outputs is not None else None,
            error=body.get("error"),
            created_at=body.get("createdAt"),
            completed_at=body.get("completedAt"),
            cost_cents=int(cost) if cost is not None else None,
            status_url=body.get("statusUrl"),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prediction:
        """Rebuild from :meth:`to_dict` (trigger events, XCom)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == STATUS_COMPLETED

    @property
    def failed(self) -> bool:
        return self.status == STATUS_FAILED

    def with_cost(self, cost_cents: int | None) -> Prediction:
        """Poll answers carry no cost; keep the one the submit answer stated."""
        if self.cost_cents is not None or cost_cents is None:
            return self
        return replace(self, cost_cents=cost_cents)

    def to_dict(self) -> dict[str, Any]:
        """Every field, snake_case, JSON-serialisable."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def to_result(self) -> dict[str, Any]:
        """The operators' XCom return value (the provider's public contract)."""
        return {
            "id": self.id,
            "model_id": self.model_id,
            "status": self.status,
            "outputs": list(self.outputs) if self.outputs is not None else None,
            "error": self.error,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "cost_cents": self.cost_cents,
        }


def check_answer_is_for(
    prediction: Prediction, prediction_id: str | None, model_id: str | None = None
) -> Prediction:
    """``prediction`` if it answers for ``prediction_id`` (and, where both are known, ``model_id``);
    else :class:`VibeDreamAnswerMismatchError` naming both. An answer counts only for what was asked:
    another prediction's answer adopted as this one's would be a silent wrong result, paid for."""
    if prediction_id is not None and prediction.id != prediction_id:
        raise VibeDreamAnswerMismatchError(
            f"VibeDream answered a poll of prediction {prediction_id} with prediction "
            f"{shorten(prediction.id, 80)}; an answer for another prediction is not a result",
            polled_id=prediction_id,
            answered_id=prediction.id,
            expected_model=model_id,
            answered_model=prediction.model_id,
        )
    if model_id is not None and prediction.model_id is not None and prediction.model_id != model_id:
        raise VibeDreamAnswerMismatchError(
            f"VibeDream answered for prediction {prediction.id} of model "
            f"{shorten(prediction.model_id, 80)!r} where model {model_id!r} was asked; "
            "an answer for another model is not a result",
            polled_id=prediction_id or prediction.id,
            answered_id=prediction.id,
            expected_model=model_id,
            answered_model=prediction.model_id,
        )
    return prediction


def iso_seconds(value: str | None) -> float | None:
    """Epoch seconds of an ISO 8601 time as the API writes it (``...Z``), or None."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
