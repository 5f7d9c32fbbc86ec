"""The blocking client, for workers and scripts."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import tenacity

from airflow_vibedream.client.calls import Api, ApiCall, CappedBody, deadline_reached
from airflow_vibedream.client.gate import OutageReport, poll_patiently, process_gate
from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.request import UpscaleRequest
from airflow_vibedream.client.schedule import StatusTracker, next_sleep
from airflow_vibedream.client.settings import ClientSettings
from airflow_vibedream.constants import DEFAULT_POLL_INTERVAL, UPSCALER_MODEL_ID
from airflow_vibedream.errors import VibeDreamError


class VibeDreamClient:
    """Blocking client, for workers and scripts.

    :param settings: key, base URL, timeout and retry policy.
    :param http: an ``httpx.Client`` to use instead of a new one (tests, custom transports).
    """

    def __init__(self, settings: ClientSettings, *, http: httpx.Client | None = None) -> None:
        self.settings = settings
        self._api = Api(settings)
        self._http = http or httpx.Client(timeout=settings.timeout, follow_redirects=True)

    def _call(self, call: ApiCall, *, retry: bool = True) -> Prediction:
        # The same shape as the async client: one plain attempt, then tenacity for the retries.
        if not retry:
            return self._attempt(call)
        try:
            return self._attempt(call)
        except VibeDreamError as exc:
            delay = self.settings.retry.after_first_failure(call.description, exc)
        time.sleep(delay)
        for attempt in tenacity.Retrying(**self.settings.retry.tenacity_kwargs(call.description, 1)):
            with attempt:
                return self._attempt(call)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    def _attempt(self, call: ApiCall) -> Prediction:
        body = CappedBody(self.settings.max_response_bytes, call)
        try:
            streamed = self._http.send(call.request, stream=True, follow_redirects=not call.submits)
            try:
                for chunk in streamed.iter_bytes():
                    body.feed(chunk)
            finally:
                streamed.close()
        except httpx.HTTPError as exc:
            raise call.on_http_error(exc) from exc
        return call.on_body(streamed, body)

    def submit(
        self, model_id: str, payload: Mapping[str, Any], *, wait_at_most: float | None = None
    ) -> Prediction:
        """Start a prediction of any model; returns the submit answer (usually ``processing``)."""
        return self._call(self._api.submit(model_id, payload, wait_at_most=wait_at_most))

    def upscale(self, request: UpscaleRequest) -> Prediction:
        """Start an upscale job."""
        return self.submit(UPSCALER_MODEL_ID, request.to_payload())

    def get_prediction(self, prediction_id: str, *, retry: bool = True) -> Prediction:
        """Poll a prediction once (transient errors retried per the policy, unless ``retry`` is False)."""
        return self._call(self._api.get_prediction(prediction_id), retry=retry)

    def poll_patiently(
        self,
        prediction_id: str,
        *,
        deadline: float | None,
        resume_within: float,
        on_unavailable: OutageReport | None = None,
    ) -> Prediction:
        """Poll once, riding out transient failures until ``deadline`` (then
        :class:`VibeDreamTimeoutError`) through this process's shared outage gate."""
        return poll_patiently(
            lambda: self.get_prediction(prediction_id, retry=False),
            gate=process_gate(self.settings.base_url),
            prediction_id=prediction_id,
            deadline=deadline,
            policy=self.settings.retry,
            resume_within=resume_within,
            on_unavailable=on_unavailable,
        )

    def wait_for_prediction(
        self,
        prediction_id: str,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        deadline: float | None = None,
        on_status_change: Callable[[Prediction, float], None] | None = None,
        on_unavailable: OutageReport | None = None,
    ) -> Prediction:
        """Poll until the prediction is terminal, riding out outages; raise
        :class:`VibeDreamTimeoutError` at ``deadline`` (epoch seconds). Returns the terminal
        prediction, failed or not."""
        tracker = StatusTracker(on_status_change)
        while True:
            prediction = self.poll_patiently(
                prediction_id, deadline=deadline, resume_within=poll_interval, on_unavailable=on_unavailable
            )
            tracker.observe(prediction)
            if prediction.is_terminal:
                return prediction
            if deadline is not None and time.time() >= deadline:
                raise deadline_reached(prediction_id, deadline)
            time.sleep(next_sleep(poll_interval, deadline))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VibeDreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
