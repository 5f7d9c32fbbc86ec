"""Apache Airflow provider for the VibeDream image-upscaler API."""

__version__ = "0.1.0"
