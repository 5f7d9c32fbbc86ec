"""The non-blocking client, for triggers: one connection pool per event loop, polls on aiohttp."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import tenacity

from airflow_vibedream.client.calls import MAX_API_REDIRECTS, Api, ApiCall, CappedBody
from airflow_vibedream.client.models import Prediction
from airflow_vibedream.client.request import UpscaleRequest
from airflow_vibedream.client.settings import ClientSettings
from airflow_vibedream.constants import UPSCALER_MODEL_ID
from airflow_vibedream.errors import VibeDreamError

if TYPE_CHECKING:
    import aiohttp


class _AiohttpSender:
    """Sends a poll straight through an aiohttp session: the triggerer's hot path.

    httpx over the aiohttp transport spends about as much CPU in its client and response wrapping as
    aiohttp spends on the whole request (~0.95 vs ~0.45 ms per poll with hundreds of triggers on one
    loop; ``make bench``). Answers are read exactly as the httpx path reads them: size-capped, errors
    mapped by the same :class:`ApiCall`. A redirect is handed back (None) to the httpx path, which
    follows it only on the API's own origin (:meth:`ApiCall.redirect_of`).
    """

    def __init__(self, session: aiohttp.ClientSession, settings: ClientSettings, api: Api) -> None:
        import aiohttp
        import yarl

        # Imported here, as aiohttp is: only a process that polls pays for it. Bound once, not per poll.
        from airflow_vibedream.client.aiohttp_errors import as_httpx_error_of

        self._as_httpx_error = as_httpx_error_of
        self._url = yarl.URL
        self._session = session
        self._headers = api.plain_headers
        self._limit = settings.max_response_bytes
        # httpx's per-phase timeout, as httpx-aiohttp maps it: pool wait, TCP connect, each read.
        self._timeout = aiohttp.ClientTimeout(
            connect=settings.timeout, sock_connect=settings.timeout, sock_read=settings.timeout
        )
        self._client_error = aiohttp.ClientError
        self._per_phase = settings.timeout
        self._client_timeout = aiohttp.ClientTimeout  # bound once: this is every poll's path
        # Most polls are far from their deadline: their whole-answer budget is the timeout itself.
        self._whole_answer = self._client_timeout(
            total=settings.timeout,
            connect=settings.timeout,
            sock_connect=settings.timeout,
            sock_read=settings.timeout,
        )

    def _timeout_within(self, budget: float) -> aiohttp.ClientTimeout:
        """The per-phase timeouts, and ``budget`` seconds for the whole answer."""
        if budget == self._per_phase:
            return self._whole_answer
        phase = self._per_phase
        return self._client_timeout(total=budget, connect=phase, sock_connect=phase, sock_read=phase)

    async def send(self, call: ApiCall) -> Prediction | None:
        body = CappedBody(self._limit, call)
        # Built by Api already quoted: aiohttp need not parse and re-quote it on every poll.
        url = self._url(call.url, encoded=True)
        try:
            # A poll's whole answer within its budget (a drip keeps each read short), besides the
            # per-phase timeouts.
            timeout = self._timeout if call.budget is None else self._timeout_within(call.budget)
            async with self._session.request(
                call.method, url, headers=self._headers, allow_redirects=False, timeout=timeout
            ) as answer:
                if 300 <= answer.status < 400:
                    return None
                async for chunk in answer.content.iter_chunked(64 * 1024):
                    body.feed(chunk)
                status, headers = answer.status, answer.raw_headers
        except Exception as exc:
            if type(exc).__module__.startswith("airflow_vibedream"):
                raise  # our own errors (a capped body, a refused answer) pass as they are
            if isinstance(exc, asyncio.TimeoutError) and not isinstance(exc, self._client_error):
                raise call.too_slow() from exc  # the total: aiohttp's own read timeouts are ClientErrors
            # The same httpx error as the transport's path would raise, the aiohttp error its cause.
            error = self._as_httpx_error(exc)
            raise call.on_http_error(error) from error
        content = b"".join(body.chunks)
        if 200 <= status < 300:
            return call.on_success(status, content)
        # Decompressed already: the encoding header would make httpx decode the body again.
        kept = [(key, value) for key, value in headers if key.lower() != b"content-encoding"]
        return call.on_response(httpx.Response(status, headers=kept, content=content, request=call.request))


class AsyncVibeDreamClient:
    """Non-blocking client, for triggers. Reuse one instance: it holds the connection pool.

    :param settings: key, base URL, timeout and retry policy.
    :param http: an ``httpx.AsyncClient`` to use instead of a new one.
    :param session: the ``aiohttp.ClientSession`` under ``http``'s transport, if it has one: polls
        then go straight through it (the hot path of a triggerer); everything else through ``http``.
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        http: httpx.AsyncClient | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.settings = settings
        self._api = Api(settings)
        self._http = http or httpx.AsyncClient(timeout=settings.timeout, follow_redirects=True)
        self._fast = _AiohttpSender(session, settings, self._api) if session is not None else None
        self._users = 0
        self._retired = False
        self._closed = False
        self._closing: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def retire(self) -> None:
        """Superseded (its settings changed, e.g. a rotated key): close it once nobody uses it."""
        self._retired = True
        if self._users == 0 and not self._closed:
            # Closing releases sockets only; done in the background so the caller need not await.
            self._closing = asyncio.ensure_future(self.aclose())

    @classmethod
    def over_aiohttp(cls, settings: ClientSettings) -> AsyncVibeDreamClient:
        """A client on one aiohttp connection pool: polls go straight through aiohttp, everything
        else through httpx with the aiohttp transport. Call it inside the event loop that uses it."""
        import aiohttp
        from httpx_aiohttp import AiohttpTransport

        # Verified as httpx would (certifi roots), 5 s idle keep-alive; room for every poll the
        # poll window may have in flight, and a few more for submits and downloads beside them.
        connections = max(100, settings.max_polls_in_flight + 16)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=connections, keepalive_timeout=5.0, ssl=httpx.create_ssl_context()
            )
        )
        # API calls follow redirects in _send, only on the API's origin (the key never leaves it).
        http = httpx.AsyncClient(
            transport=AiohttpTransport(client=session), timeout=settings.timeout, follow_redirects=True
        )
        return cls(settings, http=http, session=session)

    def _release(self) -> None:
        self._users -= 1
        if self._retired and self._users == 0 and not self._closed:
            self._closing = asyncio.ensure_future(self.aclose())

    async def _call(self, call: ApiCall, *, fast: bool = False, retry: bool = True) -> Prediction:
        # Counted inline rather than through a context manager: this is every poll's path.
        self._users += 1
        try:
            return await self._call_in_use(call, fast=fast, retry=retry)
        finally:
            self._release()

    async def _call_in_use(self, call: ApiCall, *, fast: bool, retry: bool) -> Prediction:
        # One plain attempt, then tenacity for the retries (see RetryPolicy.after_first_failure).
        if not retry:
            return await self._attempt(call, fast)
        try:
            return await self._attempt(call, fast)
        except VibeDreamError as exc:
            delay = self.settings.retry.after_first_failure(call.description, exc)
        await asyncio.sleep(delay)
        async for attempt in tenacity.AsyncRetrying(
            **self.settings.retry.tenacity_kwargs(call.description, 1)
        ):
            with attempt:
                return await self._attempt(call, fast)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    async def _attempt(self, call: ApiCall, fast: bool) -> Prediction:
        if fast and self._fast is not None:
            prediction = await self._fast.send(call)
            if prediction is not None:
                return prediction
        return await self._send(call)

    async def _send(self, call: ApiCall) -> Prediction:
        if call.budget is None:
            return await self._send_following(call)
        try:  # a poll's whole answer within its budget, not only each read
            return await asyncio.wait_for(self._send_following(call), call.budget)
        except asyncio.TimeoutError as exc:
            raise call.too_slow() from exc

    async def _send_following(self, call: ApiCall) -> Prediction:
        # Redirects are followed here, not by httpx: only on the API's own origin (ApiCall.redirect_of).
        for _ in range(MAX_API_REDIRECTS + 1):
            body = CappedBody(self.settings.max_response_bytes, call)
            try:
                streamed = await self._http.send(call.request, stream=True, follow_redirects=False)
                try:
                    redirect = call.redirect_of(streamed)
                    if redirect is None:
                        async for chunk in streamed.aiter_bytes():
                            body.feed(chunk)
                finally:
                    await streamed.aclose()
            except httpx.HTTPError as exc:
                raise call.on_http_error(exc) from exc
            if redirect is None:
                return call.on_body(streamed, body)
            call = redirect
        raise call.too_many_redirects()

    async def submit(
        self, model_id: str, payload: Mapping[str, Any], *, wait_at_most: float | None = None
    ) -> Prediction:
        """Start a prediction of any model; returns the submit answer."""
        return await self._call(self._api.submit(model_id, payload, wait_at_most=wait_at_most))

    async def upscale(self, request: UpscaleRequest) -> Prediction:
        """Start an upscale job."""
        return await self.submit(UPSCALER_MODEL_ID, request.to_payload())

    async def get_prediction(
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
        return await self._call(call, fast=True, retry=retry)

    def hold(self) -> None:
        """Mark the client in use across more than one call (a poll riding out an outage), so a
        retirement (:meth:`retire`) closes it only after :meth:`release`."""
        self._users += 1

    def release(self) -> None:
        self._release()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._http.aclose()

    async def __aenter__(self) -> AsyncVibeDreamClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
