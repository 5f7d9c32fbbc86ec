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
            "airflow_vibedream.links.VibeDreamOutputLink",
            "airflow_vibedream.links.VibeDreamManifestLink",
            "airflow_vibedream.links.VibeDreamGalleryLink",
        ],
        "config": {
            "vibedream": {
                "description": "The VibeDream gallery in Airflow's UI (the api-server reads these).",
                "options": {
                    "gallery_roots": {
                        "description": "Where the gallery may read, and with which connection: a JSON "
                        "object whose keys are local directories or object-store prefixes and whose values "
                        "are the connection id the api-server reads each with (null for local "
                        "directories). The gallery shows, thumbnails and links only what lies under these "
                        "roots; records (XComs) never choose a location or a connection.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": '{"/data/upscaled": null, "s3://my-bucket/upscaled/": "aws_default"}',
                        "default": "",
                    },
                    "gallery_redirect_hosts": {
                        "description": "Hosts (comma-separated, name or name:port) the 'VibeDream output' "
                        "link may redirect to when an output stayed at the API's download URL. The "
                        "api-server never fetches those URLs itself.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "assets.vibedream.ai",
                        "default": "assets.vibedream.ai",
                    },
                    "gallery_read_timeout": {
                        "description": "Seconds one read of an image or manifest may take in all.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "30",
                        "default": "30",
                    },
                    "gallery_max_manifest_mb": {
                        "description": "The most of a batch manifest the gallery reads (later lines are "
                        "not shown).",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "64",
                        "default": "64",
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
                        "description": "The largest image the gallery reads.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "512",
                        "default": "512",
                    },
                    "record_secret": {
                        "description": "Secret the records that decide what a task adopts or reuses "
                        "(its task_state_store record, the ledger's documents) are signed with "
                        "(HMAC-SHA256 of a key derived from it). Empty: the connection's API key, so "
                        "rotating the key makes older records unauthenticated (a retry submits anew, "
                        "the ledger's images are paid once more). Set it, and keep it, to rotate API "
                        "keys freely; every worker of the deployment needs the same value.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "sensitive": True,
                        "example": None,
                        "default": "",
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
