"""VibeDreamPredictionSensor: waits for a prediction that was submitted elsewhere."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseSensorOperator, PokeReturnValue, conf

from airflow_vibedream.client.request import validate_prediction_id
from airflow_vibedream.constants import DEFAULT_POLL_INTERVAL
from airflow_vibedream.errors import VibeDreamPredictionFailedError, VibeDreamProtocolError
from airflow_vibedream.hooks.vibedream import VibeDreamHook
from airflow_vibedream.tasks.events import prediction_from_event
from airflow_vibedream.tasks.rules import permanent_errors_fail_the_task
from airflow_vibedream.tasks.settle import fire_not_before
from airflow_vibedream.tasks.validation import is_templated, positive_seconds
from airflow_vibedream.triggers.vibedream import VibeDreamPredictionTrigger

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context


class VibeDreamPredictionSensor(BaseSensorOperator):
    """Succeeds when a VibeDream prediction completes, fails when it fails; returns its result dict.

    :param prediction_id: the prediction to watch (e.g. ``{{ ti.xcom_pull(key='prediction_id') }}``).
        Templated.
    :param vibedream_conn_id: the Airflow connection of type ``vibedream``.
    :param deferrable: wait in the triggerer instead of poking from a worker.
    :param poke_interval: seconds between polls (also the trigger's poll interval).
    :param timeout: seconds before the sensor gives up (BaseSensorOperator's own argument).
    """

    template_fields: Sequence[str] = ("prediction_id", "vibedream_conn_id")

    def __init__(
        self,
        *,
        prediction_id: str,
        vibedream_conn_id: str = VibeDreamHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float | timedelta = DEFAULT_POLL_INTERVAL,
        **kwargs: Any,
    ) -> None:
        if "timeout" in kwargs:  # before Airflow's own check, which fails on inf with an OverflowError
            positive_seconds(kwargs["timeout"], "timeout")
        super().__init__(poke_interval=positive_seconds(poke_interval, "poke_interval"), **kwargs)
        if not is_templated(prediction_id):
            validate_prediction_id(prediction_id)
        self.prediction_id = prediction_id
        self.vibedream_conn_id = vibedream_conn_id
        self.deferrable = deferrable
        self._last_refused: str | None = None  # the last refused answer said in the log

    @cached_property
    def hook(self) -> VibeDreamHook:
        return VibeDreamHook(vibedream_conn_id=self.vibedream_conn_id)

    def execute(self, context: Context) -> Any:
        validate_prediction_id(self.prediction_id)  # the rendered value, before any request
        if not self.deferrable:
            with permanent_errors_fail_the_task():
                return super().execute(context)
        # One poll first: a prediction that is already over needs no trigger.
        with permanent_errors_fail_the_task():
            done = self.poke(context)
        if done.is_done:
            return done.xcom_value
        self.defer(
            trigger=VibeDreamPredictionTrigger(
                prediction_id=self.prediction_id,
                vibedream_conn_id=self.vibedream_conn_id,
                poll_interval=float(self.poke_interval),
                end_time=time.time() + float(self.timeout),
                fire_not_before=fire_not_before(),
            ),
            method_name="execute_complete",
        )

    def poke(self, context: Context) -> PokeReturnValue:
        try:
            prediction = self.hook.get_client().get_prediction(self.prediction_id)
        except VibeDreamProtocolError as exc:
            # An unreadable answer, or one for another prediction: not a result, and not a reason to
            # fail a job that may be running; poked again until the sensor's timeout (said once).
            if str(exc) != self._last_refused:
                self._last_refused = str(exc)
                self.log.warning("%s; poking again until the sensor's timeout", exc)
            return PokeReturnValue(is_done=False)
        self.log.info("VibeDream prediction %s is %s", prediction.id, prediction.status)
        if prediction.failed:
            raise VibeDreamPredictionFailedError.of(prediction.id, prediction.error)
        return PokeReturnValue(is_done=prediction.succeeded, xcom_value=prediction.to_result())

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after the trigger fired. Only a ``success`` event succeeds; any other raises the
        typed error it names, decided by the same permanent-error rule as a poke."""
        with permanent_errors_fail_the_task():
            return prediction_from_event(
                event, lambda pid: self.hook.get_client().get_prediction(pid)
            ).to_result()
