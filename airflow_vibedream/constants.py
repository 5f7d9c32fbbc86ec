"""Facts of the VibeDream API shared by the provider and the emulator (no imports, no behaviour)."""

from __future__ import annotations

#: The model id of the image upscaler in ``/api/v1/models/{model_id}/generate``.
UPSCALER_MODEL_ID = "image-upscaler"
UPSCALER_MODEL_NAME = "WaveSpeed AI Image Upscaler"

#: Allowed ``target_resolution`` values and the long edge, in pixels, of the image each one yields.
TARGET_RESOLUTIONS: dict[str, int] = {"2k": 2048, "4k": 3840, "8k": 7680}

#: Allowed ``output_format`` values.
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp")

#: Input image formats the API accepts (Pillow format names).
INPUT_IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP")

#: Prediction statuses the API reports.
STATUS_PROCESSING = "processing"
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
