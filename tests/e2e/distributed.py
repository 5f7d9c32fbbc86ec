"""A distributed Airflow on one machine: every component on a test host of its own (network
namespaces), the CeleryExecutor with a private Redis broker, a private PostgreSQL for metadata,
the emulator and a moto S3 server on hosts of their own. Each component has its own HOME, TMPDIR,
working directory and AIRFLOW_HOME; they share no writable path (the DAG files are read-only to
them, as a synced DAG folder would be). Everything is started by the test and stopped by its pid."""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from airflow_vibedream.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY
from tests.e2e.cluster import AIRFLOW_CLI, AirflowCluster, free_port, wait_for
from tests.e2e.netns import HostNetwork, LoopbackNetwork, test_hosts
from tests.e2e.services import own_dirs, private_postgres, private_redis

API_PORT = 8080
HOSTS = (
    "db",
    "broker",
    "api-server",
    "scheduler",
    "dag-processor",
    "worker-1",
    "worker-2",
    "triggerer-1",
    "triggerer-2",
    "emulator",
    "s3",
)
S3_BUCKET = "vibedream-dist"


class DistributedAirflow(AirflowCluster):
    """An :class:`AirflowCluster` whose components run on their own test hosts.

    :param network: the test hosts (one per name in ``HOSTS``).
    :param root: where each component's own directories go.
    :param dags_folder: the DAG files (read by every component).
    :param sql_alchemy_conn: the metadata database on the ``db`` host.
    :param broker_url: the Redis broker on the ``broker`` host.
    :param env: extra environment for every component (connections).
    """

    def __init__(
        self,
        network: HostNetwork | LoopbackNetwork,
        root: Path,
        dags_folder: Path,
        sql_alchemy_conn: str,
        broker_url: str,
        env: dict[str, str],
    ) -> None:
        api = network.hosts["api-server"]
        super().__init__(root / "cli", dags_folder, env=env, sql_alchemy_conn=sql_alchemy_conn)
        self.network = network
        self.root = root
        self.broker_url = broker_url
        self.database_url = sql_alchemy_conn
        # Isolated hosts each have every port free; on the loopback fallback they share one machine.
        self.isolated = api.isolated
        self.port = API_PORT if self.isolated else free_port()
        self.base_url = f"http://{api.address}:{self.port}"
        result_backend = "db+" + sql_alchemy_conn  # the psycopg2 driver, named: it is the one installed
        self.env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CORE__PARALLELISM": "64",
                "AIRFLOW__CELERY__BROKER_URL": broker_url,
                "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "8",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__API__HOST": api.address,
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
                # Every host answers on its own address; the default port is free on each of them.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "8793",
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "8794",
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "5",
                # A killed worker's tasks are noticed in seconds, not the production defaults' minutes:
                # its running tasks stop heartbeating, its reserved messages come back to the queue.
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                # Airflow 3.3 also makes this the lifetime of the token sent with each Celery message:
                # 700 tasks on 8-16 worker slots wait minutes in the queue, and a message older than
                # its token fails at its worker with "Invalid auth token" (and the try with it).
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "900",
                # Longer than any task runs before it defers: Redis hands an unacknowledged message
                # to a worker again after this, and a second copy of a running try fails it (the
                # batch reads its 500 inputs' bytes for the ledger before it submits: ~10-60 s).
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "180",
            }
        )

    def start(self, component: str, name: str | None = None, extra_env: dict[str, str] | None = None) -> int:
        """Start ``component`` on the host called ``name`` (default: the component's own name)."""
        name = name or component
        host = self.network.hosts[name]
        dirs = own_dirs(self.root, name)
        home = Path(dirs["HOME"]) / "airflow"
        home.mkdir(exist_ok=True)
        args = [AIRFLOW_CLI, *component.split()]
        if component == "api-server":
            args += ["--host", host.address, "--port", str(self.port), "--workers", "1"]
        ports = {}
        if not self.isolated:  # one machine: every component's log servers need ports of their own
            ports = {
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            }
        if component == "celery worker":
            args += ["--celery-hostname", f"{name}@%h", "--concurrency", "8"]
        log = (self.root / f"{name}.out").open("ab")
        process = subprocess.Popen(
            host.command(*args),
            env={**self.env, **ports, **dirs, "AIRFLOW_HOME": str(home), **(extra_env or {})},
            cwd=dirs["PWD"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its children too
        )
        log.close()
        self.processes[name] = process
        return process.pid

    def output(self, name: str) -> str:
        path = self.root / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_all(self) -> None:
        self.migrate()
        for component, name in (
            ("api-server", "api-server"),
            ("scheduler", "scheduler"),
            ("dag-processor", "dag-processor"),
            ("celery worker", "worker-1"),
            ("celery worker", "worker-2"),
            ("triggerer", "triggerer-1"),
            ("triggerer", "triggerer-2"),
        ):
            self.start(component, name)
        wait_for(self._api_ready, timeout=180, what="the api-server to answer")


@contextlib.contextmanager
def moto_s3_on(network: HostNetwork | LoopbackNetwork, root: Path) -> Iterator[str]:
    """moto's S3 server on the ``s3`` host, with one bucket; yields its endpoint URL."""
    import boto3

    host = network.hosts["s3"]
    port = 5000 if host.isolated else free_port()
    server = subprocess.Popen(
        host.command(str(Path(sys.executable).parent / "moto_server"), "-H", host.address, "-p", str(port)),
        stdout=(root / "moto.out").open("ab"),
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://{host.address}:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

        def bucket_made() -> bool:
            try:
                client.create_bucket(Bucket=S3_BUCKET)
                return True
            except Exception:  # not listening yet
                return False

        wait_for(bucket_made, timeout=60, what="moto's S3 server")
        yield endpoint
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


@contextlib.contextmanager
def distributed_airflow(
    root: Path, dags_folder: Path
) -> Iterator[tuple[DistributedAirflow, EmulatorProcess, str]]:
    """The whole deployment: yields (airflow, emulator, s3 endpoint)."""
    with test_hosts(*HOSTS) as network:
        emulator_host = network.hosts["emulator"]
        isolated = emulator_host.isolated
        with (
            private_postgres(
                network.hosts["db"], root / "db", network.subnet, port=5432 if isolated else free_port()
            ) as database,
            private_redis(
                network.hosts["broker"], root / "broker", port=6379 if isolated else free_port()
            ) as broker,
            moto_s3_on(network, root) as s3,
            EmulatorProcess(
                "--api-key",
                TEST_KEY,
                "--processing-seconds",
                "3",
                log_path=root / "emulator.log",
                host=emulator_host.address,
                command_prefix=emulator_host.prefix,
            ) as emulator,
        ):
            connections = {
                # Plain http on a routed (not loopback) address: the test network is the machine's own.
                "AIRFLOW_CONN_VIBEDREAM_DEFAULT": json.dumps(
                    {
                        "conn_type": "vibedream",
                        "host": emulator.base_url,
                        "password": TEST_KEY,
                        "extra": {"allow_insecure_http": True},
                    }
                ),
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                    {
                        "conn_type": "aws",
                        "login": "testing",
                        "password": "testing",
                        "extra": {"endpoint_url": s3, "region_name": "us-east-1"},
                    }
                ),
            }
            airflow = DistributedAirflow(network, root, dags_folder, database, broker, connections)
            airflow.broker_url = broker
            airflow.database_url = database
            try:
                airflow.start_all()
                yield airflow, emulator, s3
            finally:
                airflow.stop()
