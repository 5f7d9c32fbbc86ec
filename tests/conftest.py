"""Test-wide setup: a throwaway AIRFLOW_HOME before anything imports Airflow, and emulator fixtures."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Airflow reads its configuration on first import: point it at a private home before that happens.
_HOME = Path(tempfile.mkdtemp(prefix="vibedream-tests-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME / 'airflow.db'}"
# The DAGs folder holds the examples and the tests' own DAGs: dag.test() runs only DAGs of a bundle.
_DAGS = _HOME / "dags"
_DAGS.mkdir()
for _source in ("example_dags", "tests/dags"):
    for _dag_file in (Path(__file__).resolve().parent.parent / _source).glob("*.py"):
        shutil.copy(_dag_file, _DAGS / _dag_file.name)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_DAGS)
os.environ.pop("VIBEDREAM_API_KEY", None)
os.environ.pop("AIRFLOW_CONN_VIBEDREAM_DEFAULT", None)

import httpx  # noqa: E402
import pytest  # noqa: E402

from airflow_vibedream.emulator import EmulatorConfig, EmulatorServer  # noqa: E402

TEST_KEY = "test-key-7f3a9c1e5b"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Files a test wants a person to look at (``record_property("screenshot", path)``)."""
    for report in terminalreporter.getreports("passed"):
        for name, value in report.user_properties:
            if name == "screenshot":
                terminalreporter.write_line(f"screenshot ({report.nodeid}): {value}")


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def dags_folder() -> Path:
    return _DAGS


def connection_json(base_url: str, api_key: str | None = TEST_KEY, **extra: object) -> str:
    conn: dict[str, object] = {"conn_type": "vibedream", "host": base_url}
    if api_key is not None:
        conn["password"] = api_key
    if extra:
        conn["extra"] = extra
    return json.dumps(conn)


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """A fresh emulator on a free loopback port (in a thread), fast jobs."""
    with EmulatorServer(EmulatorConfig(api_key=TEST_KEY, processing_seconds=0.3)) as server:
        yield server


@pytest.fixture
def slow_vibedream_conn(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    """``vibedream_default`` on an emulator whose jobs take 2 s: for tests that must see a job still
    processing however slowly a cold process reaches its first poll."""
    with EmulatorServer(EmulatorConfig(api_key=TEST_KEY, processing_seconds=2.0)) as server:
        monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(server.base_url))
        yield server


@pytest.fixture
def vibedream_conn(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """``vibedream_default`` pointing at the emulator, through Airflow's env-var connection backend."""
    monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(emulator.base_url))
    return emulator


def emulator_stats(base_url: str) -> dict[str, int]:
    return httpx.get(f"{base_url}/_emulator/stats").json()["counters"]


class MotoS3:
    """moto's S3 in server mode on a free loopback port: a real HTTP S3 endpoint."""

    bucket = "vibedream-test"

    def __init__(self) -> None:
        import socket

        from moto.server import ThreadedMotoServer

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def connection_json(self) -> str:
        return json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            }
        )

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def start(self) -> MotoS3:
        self._server.start()
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        self._server.stop()

    def keys(self, prefix: str = "") -> list[str]:
        listing = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for item in listing.get("Contents", [])]


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto S3 server for the session (fsspec caches a file system per connection, so its
    endpoint must not change within a process), with one bucket and ``aws_default`` pointing at it.
    Tests keep apart by key prefix."""
    server = MotoS3().start()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = server.connection_json()
    try:
        yield server
    finally:
        os.environ.pop("AIRFLOW_CONN_AWS_DEFAULT", None)
        server.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``make test`` runs ``-m "not e2e" tests/unit tests/integration`` (``make test-fast``), then
    ``tests/e2e``: a test marked e2e outside ``tests/e2e``, or one there without the mark, would run
    twice or never. Refused at collection, whatever was asked."""
    misplaced = [
        item.nodeid
        for item in items
        if (item.get_closest_marker("e2e") is not None) != item.nodeid.startswith("tests/e2e/")
    ]
    if misplaced:
        raise pytest.UsageError(f"e2e tests live in tests/e2e/ and only there: {misplaced}")
