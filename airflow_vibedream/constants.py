"""Facts of the VibeDream API the provider uses (no imports, no behaviour). The emulator keeps its
own copy (``emulator/contract.py``) on purpose, so that it checks the provider instead of agreeing
with it by construction."""

from __future__ import annotations

#: The model id of the image upscaler in ``/api/v1/models/{model_id}/generate``.
UPSCALER_MODEL_ID = "image-upscaler"

#: Allowed ``target_resolution`` values and the long edge, in pixels, of the image each one yields.
TARGET_RESOLUTIONS: dict[str, int] = {"2k": 2048, "4k": 3840, "8k": 7680}

#: Allowed ``output_format`` values.
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp")

#: Prediction statuses the API reports that end a prediction (the other one is ``processing``).
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
TERMINAL_STATUSES: frozenset[str] = frozenset({STATUS_COMPLETED, STATUS_FAILED})

DEFAULT_BASE_URL = "https://api.vibedream.ai"
API_KEY_ENV_VAR = "VIBEDREAM_API_KEY"

GENERATE_PATH = "/api/v1/models/{model_id}/generate"
PREDICTION_PATH = "/api/v1/predictions/{prediction_id}"

#: Seconds between polls of a young prediction. The API asks for every 1-2 s; 1.8 s sees a finished
#: job within 2 s (the interval plus the answer's round trip) with the fewest polls.
DEFAULT_POLL_INTERVAL = 1.8
