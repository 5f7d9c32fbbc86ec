"""A local VibeDream-compatible API server: the same routes and JSON, real image resampling, offline."""

from airflow_vibedream.emulator.app import create_app
from airflow_vibedream.emulator.server import EmulatorServer
from airflow_vibedream.emulator.state import EmulatorConfig

__all__ = ["EmulatorConfig", "EmulatorServer", "create_app"]
