"""Provider metadata, read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_vibedream import __version__

INTEGRATION = "VibeDream"


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow's providers manager (validated by its JSON schema)."""
    return {
        "package-name": "airflow-provider-vibedream",
        "name": "VibeDream",
        "description": "`VibeDream <https://vibedream.ai>`__ image upscaling (2k/4k/8k) from Airflow DAGs, "
        "deferrable, with an offline emulator.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://vibedream.ai",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["airflow_vibedream.hooks.vibedream"]}],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_vibedream.operators.vibedream",
                    "airflow_vibedream.operators.batch",
                ],
            }
        ],
        "sensors": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_vibedream.sensors.vibedream"]}
        ],
        "triggers": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_vibedream.triggers.vibedream"]}
        ],
        "extra-links": [
            "airflow_vibedream.plugins.links.VibeDreamOutputLink",
            "airflow_vibedream.plugins.links.VibeDreamManifestLink",
            "airflow_vibedream.plugins.links.VibeDreamGalleryLink",
        ],
        "config": {
            "vibedream": {
                "description": "The VibeDream gallery in Airflow's UI (the api-server reads these).",
                "options": {
                    "gallery_local_roots": {
                        "description": "Directories (os.pathsep-separated) whose files the gallery may "
                        "serve and thumbnail. Outputs stored on a local path elsewhere are not shown: a path "
                        "in an XCom must never expose the api-server's own files.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/data/upscaled",
                        "default": "",
                    },
                    "gallery_cache_dir": {
                        "description": "Where thumbnails are cached (default: vibedream-thumbnails in "
                        "AIRFLOW_HOME).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/var/cache/vibedream",
                        "default": "",
                    },
                    "gallery_cache_mb": {
                        "description": "The most the thumbnail cache holds; the least recently used go "
                        "first.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "256",
                        "default": "256",
                    },
                    "gallery_max_source_mb": {
                        "description": "The largest image (or manifest) the gallery reads.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "512",
                        "default": "512",
                    },
                    "resume_settle_seconds": {
                        "description": "Seconds from a deferral to the earliest event of its trigger. "
                        "Airflow 3.1-3.3 notices a deferring task's exit up to [workers] "
                        "min_heartbeat_interval late and can then fail a task that resumed in the "
                        "meantime (apache/airflow#71580, #72716). Empty: that interval plus 5 seconds.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "10",
                        "default": "",
                    },
                },
            }
        },
        "connection-types": [
            {
                "hook-class-name": "airflow_vibedream.hooks.vibedream.VibeDreamHook",
                "hook-name": "VibeDream",
                "connection-type": "vibedream",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port"],
                    "relabeling": {"host": "Base URL", "password": "API Key"},
                    "placeholders": {
                        "host": "https://api.vibedream.ai",
                        "password": "your VibeDream API key (empty: $VIBEDREAM_API_KEY)",
                    },
                },
                "conn-fields": {
                    "timeout": {
                        "label": "Request timeout (seconds)",
                        "description": "Timeout of each HTTP request to the API. Default 30.",
                        "schema": {"type": ["number", "null"], "minimum": 0},
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "description": "Retries of transient failures (429, 5xx, network). Default 5.",
                        "schema": {"type": ["integer", "null"], "minimum": 0},
                    },
                    "allow_insecure_http": {
                        "label": "Allow plain http",
                        "description": "Allow an http:// base URL on a non-loopback host "
                        "(sends the key unencrypted).",
                        "schema": {"type": ["boolean", "null"]},
                    },
                },
            }
        ],
    }
