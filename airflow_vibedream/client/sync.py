"""The blocking client, for workers and scripts."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx
import tenacity

from airflow_vibedream.client.calls import MAX_API_REDIRECTS, Api, ApiCall, CappedBody
from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.request import UpscaleRequest
from airflow_vibedream.client.settings import ClientSettings
from airflow_vibedream.constants import UPSCALER_MODEL_ID
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
        # Redirects are followed here, not by httpx: only on the API's own origin (ApiCall.redirect_of).
        # A poll's whole answer has a budget: each read is bounded by it, and so is their sum.
        started = time.monotonic()
        for _ in range(MAX_API_REDIRECTS + 1):
            body = CappedBody(self.settings.max_response_bytes, call)
            try:
                streamed = self._http.send(call.request, stream=True, follow_redirects=False)
                try:
                    redirect = call.redirect_of(streamed)
                    if redirect is None:
                        for chunk in streamed.iter_bytes():
                            body.feed(chunk)
                            if call.budget is not None and time.monotonic() - started > call.budget:
                                raise call.too_slow()
                finally:
                    streamed.close()
            except httpx.HTTPError as exc:
                raise call.on_http_error(exc) from exc
            if redirect is None:
                return call.on_body(streamed, body)
            call = redirect
        raise call.too_many_redirects()

    def submit(
        self, model_id: str, payload: Mapping[str, Any], *, wait_at_most: float | None = None
    ) -> Prediction:
        """Start a prediction of any model; returns the submit answer (usually ``processing``)."""
        return self._call(self._api.submit(model_id, payload, wait_at_most=wait_at_most))

    def upscale(self, request: UpscaleRequest) -> Prediction:
        """Start an upscale job."""
        return self.submit(UPSCALER_MODEL_ID, request.to_payload())

    def get_prediction(
        self,
        prediction_id: str,
        *,
        retry: bool = True,
        model_id: str | None = None,
        status_only: bool = False,
        until: float | None = None,
    ) -> Prediction:
        """Poll a prediction once (transient errors retried per the policy, unless ``retry`` is False).
        An answer for another prediction (or for another model than ``model_id``) is a
        :class:`~airflow_vibedream.errors.VibeDreamAnswerMismatchError`, never a result."""
        call = self._api.get_prediction(prediction_id, model_id, status_only=status_only, until=until)
        return self._call(call, retry=retry)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VibeDreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
