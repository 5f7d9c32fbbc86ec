"""A real Airflow for end-to-end tests: api-server, scheduler, dag-processor and triggerer as separate
processes, LocalExecutor, its own AIRFLOW_HOME and free loopback ports. Each process is started in
its own session and stopped through its own pid (its process group), never by name."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

AIRFLOW_CLI = str(Path(sys.executable).parent / "airflow")
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_line(entry: Any) -> str:
    """One structured task log entry as a line (level, event, and an error's last line)."""
    if not isinstance(entry, dict):
        return str(entry)
    error = entry.get("error_detail")
    last_error = f" | {error[-1].get('exc_type')}: {error[-1].get('exc_value')}" if error else ""
    return f"{entry.get('level', '')} {entry.get('event', '')}{last_error}"


def wait_for(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.5, what: str = "condition"
) -> Any:
    """Poll an observable state until it holds. The states here (task states, HTTP readiness) have no
    push notification, so a bounded poll is the event; the bound turns a hang into a clear failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def postgres_database(admin_url: str, prefix: str = "vibedream") -> Iterator[str]:
    """A fresh, uniquely named database on the PostgreSQL server at ``admin_url`` (an admin URL),
    dropped afterwards; yields its SQLAlchemy URL. Connection errors are psycopg2's own."""
    import psycopg2

    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = psycopg2.connect(admin_url, connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{admin_url.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg2://')}/{name}"
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


class AirflowCluster:
    """One Airflow deployment on this machine.

    :param home: the AIRFLOW_HOME (created if missing).
    :param dags_folder: where the DAG files are.
    :param env: extra environment (connections, config overrides).
    :param sql_alchemy_conn: the metadata database; default: SQLite in ``home``.
    """

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        env: Mapping[str, str] | None = None,
        sql_alchemy_conn: str | None = None,
    ) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn or f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            **(env or {}),
        }
        self._token: str | None = None
        self._credentials: dict[str, str] | None = None

    # -- processes ---------------------------------------------------------------------------------

    def migrate(self) -> None:
        self.cli("db", "migrate")

    def cli(self, *args: str) -> str:
        """Run one ``airflow`` command against this deployment; its output."""
        result = subprocess.run(
            [AIRFLOW_CLI, *args], env=self.env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        return result.stdout

    def start(
        self,
        component: str,
        name: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> int:
        """Start one component (``name`` tells two triggerers apart); returns its pid."""
        name = name or component
        args = [AIRFLOW_CLI, component, *extra_args]
        if component == "api-server":
            args += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log = (self.home / f"{name}.out").open("ab")
        process = subprocess.Popen(
            args,
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its children too
        )
        log.close()
        self.processes[name] = process
        return process.pid

    def start_all(self) -> None:
        self.migrate()
        for component in COMPONENTS:
            self.start(component)
        wait_for(self._api_ready, timeout=120, what="the api-server to answer")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group of the component we started as ``name``."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)

    def output(self, name: str) -> str:
        path = self.home / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- REST API ----------------------------------------------------------------------------------

    def _api_ready(self) -> bool:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.output(name)[-3000:]}")
        try:
            return httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def token(self, username: str | None = None, password: str | None = None) -> str:
        """A JWT: for everyone-admin deployments without credentials, else through the login API."""
        if username is None:
            return str(httpx.get(f"{self.base_url}/auth/token", timeout=30).json()["access_token"])
        response = httpx.post(
            f"{self.base_url}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def log_in_as(self, username: str, password: str) -> None:
        """Use this user for the REST calls below (deployments with real users)."""
        self._credentials = {"username": username, "password": password}
        self._token = None

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._token is None:
            self._token = self.token(**(self._credentials or {}))
        headers = {"Authorization": f"Bearer {self._token}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.base_url}/api/v2{path}", headers=headers, timeout=30, **kwargs)

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        wait_for(
            lambda: self.api("GET", f"/dags/{dag_id}").status_code == 200,
            timeout=timeout,
            what=f"DAG {dag_id}",
        )

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        response = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        response.raise_for_status()
        return str(response.json()["dag_run_id"])

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        response = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        response.raise_for_status()
        return dict(response.json())

    def dag_run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """The run's final state; a failed run's task instances and failed tries' logs are printed
        (pytest shows them with the failing test), because a test's tmp folder may be gone by the
        time someone reads a CI report."""
        state = str(
            wait_for(
                lambda: (state := self.dag_run_state(dag_id, run_id)) in ("success", "failed") and state,
                timeout=timeout,
                what=f"run {run_id} to finish",
            )
        )
        if state == "failed":
            print(self.describe_run(dag_id, run_id))
        return state

    def describe_run(self, dag_id: str, run_id: str, log_lines: int = 40) -> str:
        """Each task instance's state and try, and the last lines of every unsuccessful try's log."""
        said = [f"run {dag_id}/{run_id}:"]
        for ti in self.task_instances(dag_id, run_id):
            said.append(f"  {ti['task_id']}[{ti['map_index']}] {ti['state']} try {ti['try_number']}")
            if ti["state"] == "success":
                continue
            for try_number in range(1, ti["try_number"] + 1):
                response = self.api(
                    "GET",
                    f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{try_number}",
                    params={"map_index": ti["map_index"], "full_content": True},
                    headers={"Accept": "application/json"},
                )
                tail = [log_line(entry) for entry in response.json().get("content", [])][-log_lines:]
                said += [f"    try {try_number} log:", *(f"      {line}" for line in tail)]
        return "\n".join(said)

    def task_instances(self, dag_id: str, run_id: str, task_id: str | None = None) -> list[dict[str, Any]]:
        """Every task instance of a run (all pages); only ``task_id``'s when given, by map index."""
        found: list[dict[str, Any]] = []
        while True:
            page = self.api(
                "GET",
                f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                params={"limit": 100, "offset": len(found)},
            ).json()["task_instances"]
            found += page
            if len(page) < 100:
                break
        if task_id is not None:
            found = sorted((ti for ti in found if ti["task_id"] == task_id), key=lambda ti: ti["map_index"])
        return found

    def xcom_mapped(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> Any:
        response = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
            params={"map_index": map_index},
        )
        response.raise_for_status()
        return response.json()["value"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        response = self.api(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        )
        response.raise_for_status()
        return response.json()["value"]
