"""``make dev``: the emulator and a whole Airflow wired to it, on free ports, until Ctrl-C.

Starts the VibeDream emulator, migrates an AIRFLOW_HOME (a throwaway directory, or ``--home``), and
runs Airflow's scheduler, triggerer, dag-processor and api-server against it, each in a process
group of its own, with:

- the ``vibedream_default`` connection pointing at the emulator (``AIRFLOW_CONN_VIBEDREAM_DEFAULT``);
- ``<home>/outputs`` as the gallery's root (``[vibedream] gallery_roots``);
- ``<home>/dags`` as the DAGs folder (drop your own DAGs there) and the repository's
  ``example_dags/`` as a second DAG bundle.

It prints the UI's URL, the login and the emulator's URL, and on SIGINT or SIGTERM stops exactly
the process groups it started (and the emulator), then removes a throwaway home. See
docs/your-own-dag.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from airflow_vibedream.emulator.process import EmulatorProcess

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).parent / "airflow")
#: The API key the emulator accepts, and the connection's password.
DEV_KEY = "dev-key"
#: The simple auth manager's user (an admin): the password is made once per home.
USER = "admin"
COMPONENTS = ("scheduler", "triggerer", "dag-processor", "api-server")
#: What the health endpoint must say of each before the deployment is announced as ready.
HEALTH = ("metadatabase", "scheduler", "triggerer", "dag_processor")


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: stop everything that was started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def password(home: Path) -> str:
    """The admin's password, kept in the simple auth manager's own password file, so a chosen home
    keeps its login across restarts (the api-server only adds passwords for users it lacks)."""
    path = home / "simple_auth_manager_passwords.json.generated"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict) or not isinstance(known.get(USER), str):
        known = {**(known if isinstance(known, dict) else {}), USER: secrets.token_urlsafe(12)}
        path.write_text(json.dumps(known) + "\n")
        path.chmod(0o600)
    return str(known[USER])


def jwt_secret(home: Path) -> str:
    """One secret for every component (they must agree), kept with the home: a browser's session
    survives a restart of a chosen home."""
    path = home / "dev-jwt-secret"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def airflow_env(home: Path, api_port: int, emulator_url: str) -> dict[str, str]:
    base_url = f"http://127.0.0.1:{api_port}"
    outputs = home / "outputs"
    bundles = [
        {
            "name": "dags-folder",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {},
        },
        {
            "name": "vibedream_examples",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(REPO / "example_dags")},
        },
    ]
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        # A DAG dropped into the folder shows up within seconds (files already parsed are parsed
        # again at Airflow's own pace: re-parsing every example every few seconds costs a laptop).
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret(home),
        # Not the defaults (8793, 8794): another Airflow on this machine may hold them.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW_CONN_VIBEDREAM_DEFAULT": json.dumps(
            {"conn_type": "vibedream", "host": emulator_url, "password": DEV_KEY}
        ),
        "AIRFLOW__VIBEDREAM__GALLERY_ROOTS": json.dumps({str(outputs): {"conn_id": None, "name": "outputs"}}),
        # For your own DAGs (docs/your-own-dag.md) and the defaults of example_vibedream_upscale.
        "VIBEDREAM_DEV_EMULATOR_URL": emulator_url,
        "VIBEDREAM_DEV_OUTPUT_PATH": str(outputs),
        "VIBEDREAM_EXAMPLE_IMAGE_URL": f"{emulator_url}/samples/1280x720.png",
        "VIBEDREAM_EXAMPLE_OUTPUT_PATH": str(outputs),
    }


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (from /proc; where there is none, the group is
    assumed to live on, and signalling it is harmless: it then fails with ESRCH)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        # After the command's closing parenthesis: state, ppid, pgrp.
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry.name))
    return members


class Deployment:
    """The processes of one ``make dev``: each Airflow component in a process group of its own,
    stopped through that group (never by name), and the emulator, stopped by its pid.

    :param home: the AIRFLOW_HOME.
    :param api_port: the api-server's port.
    """

    def __init__(self, home: Path, api_port: int) -> None:
        self.home = home
        self.api_port = api_port
        self.logs = home / "dev-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.emulator: EmulatorProcess | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env: dict[str, str] = {}

    @property
    def ui(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, say: Callable[[str], None]) -> None:
        self.emulator = EmulatorProcess(
            "--api-key", DEV_KEY, "--processing-seconds", "3", log_path=self.logs / "emulator.log"
        ).start()
        say(f"emulator running at {self.emulator.base_url} (pid {self.emulator.pid})")
        self.env = airflow_env(self.home, self.api_port, self.emulator.base_url)
        self.migrate(say)
        for component in COMPONENTS:
            args = [AIRFLOW, component]
            if component == "api-server":
                args += ["--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"]
            with (self.logs / f"{component}.log").open("ab") as log:
                self.processes[component] = subprocess.Popen(
                    args,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own process group: stopping it stops its children (task runners, workers)
                    # too, and Ctrl-C in the terminal reaches this script only, which stops them in
                    # order.
                    start_new_session=True,
                )
            say(f"started {component} (pid {self.processes[component].pid})")

    def migrate(self, say: Callable[[str], None]) -> None:
        """``airflow db migrate``, unless a kept home's database was migrated by this very Airflow
        version (the check alone costs Airflow ~15 s of CPU; a stamp says it)."""
        stamp = self.home / "migrated-for-airflow"
        wanted = version("apache-airflow")
        if (self.home / "airflow.db").exists() and stamp.exists() and stamp.read_text() == wanted:
            return
        say(f"migrating the Airflow database in {self.home} ...")
        with (self.logs / "migrate.log").open("ab") as log:
            migrated = subprocess.run(
                [AIRFLOW, "db", "migrate"], env=self.env, stdout=log, stderr=subprocess.STDOUT, check=False
            )
        if migrated.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed; see {self.logs / 'migrate.log'}")
        stamp.write_text(wanted)

    def dead(self) -> str | None:
        """A component (or the emulator) that exited on its own, with where to read why."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                return f"{name} exited with {process.returncode}; see {self.logs / (name + '.log')}"
        if self.emulator is not None and self.emulator.returncode is not None:
            return f"the emulator exited with {self.emulator.returncode}; see {self.logs / 'emulator.log'}"
        return None

    def healthy(self) -> bool:
        if (problem := self.dead()) is not None:
            raise RuntimeError(problem)
        try:
            answer = httpx.get(f"{self.ui}/api/v2/monitor/health", timeout=5)
        except httpx.HTTPError:
            return False
        if answer.status_code != 200:
            return False
        states = answer.json()
        return all((states.get(part) or {}).get("status") == "healthy" for part in HEALTH)

    def wait_until_healthy(self, timeout: float) -> None:
        # The health endpoint has no push: a poll with a deadline is the event.
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Airflow was not healthy within {timeout:.0f}s; see {self.logs}")
            time.sleep(0.5)

    def stop(self, say: Callable[[str], None]) -> None:
        """SIGTERM to each process group we started, SIGKILL to what is left of it after 30 s."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop within 30 s: killing its process group")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # The group may outlive its leader (a task runner finishing its task): none of it may
            # stay. Only while members remain does the group id still name our group.
            if group_members(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--home", type=Path, default=None, help="AIRFLOW_HOME to use and keep (default: a throwaway one)"
    )
    parser.add_argument("--api-port", type=int, default=0, help="the UI's port (default: a free one)")
    args = parser.parse_args()

    throwaway = args.home is None
    home = Path(tempfile.mkdtemp(prefix="vibedream-dev-")) if throwaway else args.home.expanduser().resolve()
    (home / "dags").mkdir(parents=True, exist_ok=True)
    (home / "outputs").mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        print(f"dev: {line}", flush=True)

    def on_signal(signum: int, frame: FrameType | None) -> Any:
        raise Stopped(signal.Signals(signum).name)

    # Installed before anything starts: a signal at any moment ends in the cleanup below.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    deployment = Deployment(home, args.api_port or free_port())
    code = 0
    try:
        login = password(home)  # written before the api-server starts: it keeps what it finds
        deployment.start(say)
        deployment.wait_until_healthy(timeout=300)
        assert deployment.emulator is not None
        say(f"Airflow {version('apache-airflow')} is ready")
        say(f"  UI:        {deployment.ui}  (login: {USER} / {login})")
        say(f"  emulator:  {deployment.emulator.base_url}  (API key {DEV_KEY}, connection vibedream_default)")
        say(f"  your DAGs: {home / 'dags'}  (new DAGs start paused: switch them on in the UI)")
        say(f"  outputs:   {home / 'outputs'}  (the gallery's root: Browse > VibeDream gallery)")
        say(f"  logs:      {deployment.logs}")
        say("ready; Ctrl-C stops everything" + (" and removes this throwaway home" if throwaway else ""))
        # Until a signal arrives (its handler raises Stopped here), notice a component dying.
        while (problem := deployment.dead()) is None:
            time.sleep(1.0)
        raise RuntimeError(problem)
    except Stopped as signalled:
        say(f"{signalled}: stopping")
    except (RuntimeError, OSError) as exc:
        say(f"FAILED: {exc}")
        code = 1
    finally:
        # Stopping must not be cut short by a second Ctrl-C: every process started is stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        deployment.stop(say)
        if throwaway and code == 0:
            shutil.rmtree(home, ignore_errors=True)
        say("stopped" + (f"; logs kept in {deployment.logs}" if code else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
