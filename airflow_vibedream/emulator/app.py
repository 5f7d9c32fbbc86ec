"""The emulator's HTTP face: the VibeDream routes and JSON, plus a few ``/_emulator`` extras for tests."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from airflow_vibedream.emulator.contract import (
    GENERATE_ROUTE,
    INPUT_FIELDS,
    OUTPUT_FORMATS,
    PREDICTION_ROUTE,
    TARGET_RESOLUTIONS,
    UPSCALER_MODEL_ID,
)
from airflow_vibedream.emulator.faults import (
    ANSWER_KINDS,
    OUTPUT_KINDS,
    DroppedResponse,
    EndlessResponse,
    FaultRule,
    apply_delay,
)
from airflow_vibedream.emulator.imaging import MEDIA_TYPES, broken_output, sample_image
from airflow_vibedream.emulator.state import EmulatorConfig, EmulatorState, is_upscaler

CONTROL_PREFIX = "/_emulator"
#: The body of a ``garbage`` fault.
GARBAGE_BODY = b"<html><body>502 upstream hiccup</body></html>"


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    """Errors are JSON objects with the message under ``error``, like a failed prediction's field."""
    return JSONResponse({"error": message, **extra}, status_code=status)


def fault_response(rule: FaultRule) -> Response:
    """The answer a ``status`` or ``drop`` fault gives instead of the real one."""
    if rule.kind == "drop":
        return DroppedResponse()
    if rule.kind in ("endless", "drip"):
        return EndlessResponse(delay=rule.delay if rule.kind == "drip" else 0.0)
    if rule.kind == "answer":
        return Response(rule.body.encode(), status_code=rule.status, headers=rule.headers)
    if rule.kind == "redirect":
        return Response(status_code=302, headers={"Location": rule.location})
    if rule.kind == "garbage":
        # A 2xx that is no prediction: what a misbehaving proxy or a half-deployed API sends.
        return Response(GARBAGE_BODY, status_code=200, media_type="text/html")
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if rule.retry_after is not None:
        extra["retry_after"] = rule.retry_after
        headers["Retry-After"] = (
            str(int(rule.retry_after)) if rule.retry_after == int(rule.retry_after) else str(rule.retry_after)
        )
    response = error(rule.status, f"Emulated fault: HTTP {rule.status}", **extra)
    response.headers.update(headers)
    return response


def other_answer(answer: dict[str, Any], rule: FaultRule, base_url: str) -> dict[str, Any]:
    """The polled prediction's answer, as another prediction's, completed (an ``other_answer`` fault)."""
    return {
        **answer,
        "id": rule.answer_id,
        "modelId": rule.answer_model or answer["modelId"],
        "status": "completed",
        "outputs": answer["outputs"] or [f"{base_url}/outputs/{rule.answer_id}/0.png"],
        "error": None,
        "completedAt": answer["completedAt"] or answer["createdAt"],
    }


def is_answer_fault(rule: FaultRule | None) -> bool:
    return rule is not None and rule.kind in ANSWER_KINDS


class RequestCounter:
    """Counts every API request (not the ``/_emulator`` control routes), whatever its outcome, so a
    test can assert that bad input never reached the API."""

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(CONTROL_PREFIX):
            self.state.counters["requests"] += 1
            if scope["path"].startswith("/outputs/"):
                self.state.counters["output_requests"] += 1
                headers = dict(scope["headers"])
                if b"authorization" in headers:
                    self.state.counters["outputs_requests_with_authorization"] += 1
        await self.app(scope, receive, send)


def validate_upscale_input(body: Any) -> tuple[dict[str, Any] | None, JSONResponse | None]:
    """Check the documented schema; a 400 names the first bad field and the allowed values."""
    if not isinstance(body, dict):
        return None, error(400, "The request body must be a JSON object")
    image = body.get("image")
    if not isinstance(image, str) or not image:
        return None, error(400, "image is required: a public image URL", field="image")
    if not image.startswith(("http://", "https://")):
        return None, error(400, f"image must be a public http(s) URL; got {image!r}", field="image")
    choices = {"target_resolution": tuple(TARGET_RESOLUTIONS), "output_format": OUTPUT_FORMATS}
    for name, allowed in choices.items():
        value = body.get(name)
        if value is None:
            return None, error(400, f"{name} is required: one of {', '.join(allowed)}", field=name)
        if value not in allowed:
            return None, error(400, f"{name} must be one of {', '.join(allowed)}; got {value!r}", field=name)
    for name in ("enable_base64_output", "enable_sync_mode"):
        if name in body and not isinstance(body[name], bool):
            return None, error(400, f"{name} must be a boolean; got {body[name]!r}", field=name)
    unknown = sorted(set(body) - set(INPUT_FIELDS))
    if unknown:
        return None, error(400, f"Unknown parameter: {unknown[0]}", field=unknown[0])
    return {
        "image": image,
        "target_resolution": body["target_resolution"],
        "output_format": body["output_format"],
        "enable_base64_output": bool(body.get("enable_base64_output", False)),
        "enable_sync_mode": bool(body.get("enable_sync_mode", False)),
    }, None


def create_app(config: EmulatorConfig | None = None, *, public_base_url: str = "") -> FastAPI:
    """Build the emulator application.

    :param config: behaviour; defaults to :class:`EmulatorConfig`'s.
    :param public_base_url: the URL clients reach it at (for ``statusUrl`` and output URLs).
    """
    config = config or EmulatorConfig()
    owns_data_dir = config.data_dir is None
    data_dir = Path(config.data_dir or tempfile.mkdtemp(prefix="vibedream-emulator-"))
    state = EmulatorState(config, data_dir)
    state.public_base_url = public_base_url

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await state.aclose()
        if owns_data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)

    app = FastAPI(title="VibeDream emulator", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.emulator = state

    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {config.api_key}"

    def unauthorized() -> JSONResponse:
        return error(401, "Invalid or missing API key. Send 'Authorization: Bearer <your API key>'.")

    @app.post(GENERATE_ROUTE)
    async def generate(model_id: str, request: Request) -> Response:
        state.counters["submissions"] += 1
        if not authorized(request):
            return unauthorized()
        fault = state.faults.pick("submit", kinds=(*ANSWER_KINDS, "slow"))
        held = fault is not None and fault.kind == "slow" and fault.after_create
        if not held:
            await apply_delay(fault)
        if fault is not None and is_answer_fault(fault) and not fault.after_create:
            return fault_response(fault)
        if not is_upscaler(model_id):
            return error(404, f"Model {model_id!r} not found; this emulator serves {UPSCALER_MODEL_ID!r}")
        try:
            body = json.loads(await request.body() or b"null")
        except json.JSONDecodeError:
            return error(400, "The request body is not valid JSON")
        payload, problem = validate_upscale_input(body)
        if problem is not None or payload is None:
            return problem or error(400, "invalid request")
        prediction = state.submit(model_id, payload)
        if held:  # the job exists and its answer is held: a client killed now never learns its id
            await apply_delay(fault)
        if fault is not None and is_answer_fault(fault):  # after_create: the job exists, the answer is lost
            return fault_response(fault)
        if not payload["enable_sync_mode"]:
            return JSONResponse(state.submit_answer(prediction))
        try:
            await asyncio.wait_for(prediction.done.wait(), timeout=config.sync_wait_seconds)
        except asyncio.TimeoutError:
            # Still running: answer like an asynchronous submit, so the client polls instead.
            return JSONResponse(state.submit_answer(prediction))
        return JSONResponse(state.sync_answer(prediction))

    @app.get(PREDICTION_ROUTE)
    async def get_prediction(prediction_id: str, request: Request) -> Response:
        state.counters["polls"] += 1
        if not authorized(request):
            return unauthorized()
        fault = state.faults.pick("poll", kinds=(*ANSWER_KINDS, "slow", "other_answer"))
        await apply_delay(fault)
        if fault is not None and is_answer_fault(fault):
            return fault_response(fault)
        prediction = state.predictions.get(prediction_id)
        if prediction is None:
            return error(404, f"Prediction {prediction_id} not found")
        if fault is not None and fault.kind == "other_answer":
            return JSONResponse(other_answer(prediction.to_api(), fault, state.public_base_url))
        return JSONResponse(prediction.to_api())

    @app.get("/outputs/{prediction_id}/{name}")
    async def get_output(prediction_id: str, name: str) -> Response:
        # Output links are public download URLs, like the real assets host: no auth.
        fault = state.faults.pick("output", kinds=(*ANSWER_KINDS, *OUTPUT_KINDS, "slow"))
        await apply_delay(fault)
        path = state.output_file(prediction_id, name)
        media_type = MEDIA_TYPES.get(path.suffix.lstrip("."), "application/octet-stream") if path else ""
        if fault is not None and fault.kind in OUTPUT_KINDS and path is not None:
            data = await asyncio.to_thread(broken_output, path.read_bytes(), fault.kind)
            return Response(data, media_type=media_type)
        if fault is not None and fault.kind == "drop" and path is not None:
            # An interrupted download: real bytes of the file, then the connection closes.
            with path.open("rb") as handle:
                prefix = handle.read(fault.after_bytes)
            return DroppedResponse(prefix, total=path.stat().st_size, media_type=media_type)
        if fault is not None and is_answer_fault(fault):
            return fault_response(fault)
        if path is None:
            return error(404, "Not found")
        return FileResponse(path, media_type=media_type)

    @app.get("/samples/{width}x{height}.{extension}")
    async def get_sample(width: int, height: int, extension: str, noise: bool = False) -> Response:
        """Emulator only: a generated test card to use as an input image with no network
        (``?noise=true`` adds grain, for large, barely compressible outputs)."""
        formats = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}
        if extension not in formats or not (1 <= width <= 8192 and 1 <= height <= 8192):
            return error(404, "Samples are /samples/<width>x<height>.<png|jpg|webp|gif>, up to 8192 px")
        data = await asyncio.to_thread(sample_image, width, height, formats[extension], noise=noise)
        return Response(data, media_type=f"image/{formats[extension].lower()}")

    @app.get(f"{CONTROL_PREFIX}/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(f"{CONTROL_PREFIX}/stats")
    async def stats() -> dict[str, Any]:
        return state.stats()

    @app.get(f"{CONTROL_PREFIX}/faults")
    async def get_faults() -> dict[str, Any]:
        return {"rules": [rule.to_dict() for rule in state.faults.rules]}

    @app.post(f"{CONTROL_PREFIX}/faults")
    async def set_faults(request: Request) -> Response:
        """Replace the active fault rules: ``{"rules": [{"route": "poll", "kind": "status", ...}]}``."""
        try:
            body = json.loads(await request.body() or b"{}")
            state.faults.replace(list(body.get("rules", [])))
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
            return error(400, f"Invalid fault rules: {exc}")
        return JSONResponse({"rules": [rule.to_dict() for rule in state.faults.rules]})

    @app.post(f"{CONTROL_PREFIX}/api-key")
    async def rotate_api_key(request: Request) -> Response:
        """Rotate the key the emulator accepts (``{"api_key": "..."}``): the old one gets 401 from now on."""
        body = json.loads(await request.body() or b"{}")
        new_key = body.get("api_key") if isinstance(body, dict) else None
        if not isinstance(new_key, str) or not new_key:
            return error(400, "api_key is required", field="api_key")
        config.api_key = new_key
        return JSONResponse({"rotated": True})

    @app.post(f"{CONTROL_PREFIX}/reset")
    async def reset() -> dict[str, Any]:
        state.counters.clear()
        state.faults.replace([])
        return state.stats()

    app.add_middleware(RequestCounter, state=state)
    return app
