"""The emulator's own copy of the VibeDream API contract, written from the vendor's page.

Deliberately not imported from the provider: if the provider's idea of a route, an enum or a field
name drifts from the API text, the emulator still answers as the API does, and the tests fail.
"""

from __future__ import annotations

#: Routes (the vendor page, "Submit a request" and "Polling").
GENERATE_ROUTE = "/api/v1/models/{model_id}/generate"
PREDICTION_ROUTE = "/api/v1/predictions/{prediction_id}"

#: The one model this emulator serves, and the name it reports (``modelId`` / ``modelName``).
UPSCALER_MODEL_ID = "image-upscaler"
UPSCALER_MODEL_NAME = "WaveSpeed AI Image Upscaler"

#: Schema, "Input": ``target_resolution`` (2k, 4k, 8k) and the long edge each yields, in pixels.
TARGET_RESOLUTIONS: dict[str, int] = {"2k": 2048, "4k": 3840, "8k": 7680}
#: Schema, "Input": ``output_format``.
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp")
#: Schema, "Input": "Accepted: JPEG, PNG, GIF, WebP" (Pillow's format names).
INPUT_IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP")
#: The request's fields; anything else is refused with a 400 naming it.
INPUT_FIELDS: tuple[str, ...] = (
    "image",
    "target_resolution",
    "output_format",
    "enable_base64_output",
    "enable_sync_mode",
)

#: Prediction ``status``: "One of: processing, completed, failed."
STATUS_PROCESSING = "processing"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"

#: The environment variable the vendor's docs use for the key.
API_KEY_ENV_VAR = "VIBEDREAM_API_KEY"
