"""Private instances of the services a distributed Airflow needs, each started on a test host by the
test and stopped by its pid: PostgreSQL (metadata) and Redis (Celery's broker). The machine's own
instances listen on 127.0.0.1 only, which a test host cannot reach, and sharing them would share state.
"""

from __future__ import annotations

import contextlib
import glob
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.e2e.netns import Host

POSTGRES_USER = "postgres"


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian package postgresql)")
    return found[-1]


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def private_postgres(
    host: Host, workdir: Path, subnet: str, database: str = "airflow", port: int = 5432
) -> Iterator[str]:
    """A PostgreSQL server of its own on ``host`` (trust auth for the test's ``subnet`` only); yields
    the SQLAlchemy URL of a fresh ``database`` on it."""
    workdir.mkdir(parents=True, exist_ok=True)
    # PostgreSQL runs as its own user, which cannot enter a test's root-only temporary directories:
    # its data lives in a directory of its own, removed at the end.
    own = Path(tempfile.mkdtemp(prefix="vibedream-pg-"))
    data, sockets = own / "data", own / "sockets"
    for path in (data, sockets):
        path.mkdir()
    for path in (own, data, sockets):
        shutil.chown(path, POSTGRES_USER)
    as_postgres = ["runuser", "-u", POSTGRES_USER, "--"]
    subprocess.run(
        [*as_postgres, _postgres_bin("initdb"), "-D", str(data), "--auth=trust", "-U", POSTGRES_USER],
        check=True,
        capture_output=True,
    )
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {subnet} trust\n")
    log = (workdir / "postgres.log").open("ab")
    server = subprocess.Popen(
        # setpriv execs (runuser forks): the pid is PostgreSQL's own, so stopping it stops the server.
        host.command(
            "setpriv",
            f"--reuid={POSTGRES_USER}",
            f"--regid={POSTGRES_USER}",
            "--init-groups",
            "--",
            _postgres_bin("postgres"),
            "-D",
            str(data),
            "-h",
            host.address,
            "-p",
            str(port),
            "-k",
            str(sockets),
            "-c",
            "fsync=off",
            "-c",
            "max_connections=300",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        ready = [_postgres_bin("pg_isready"), "-h", host.address, "-p", str(port), "-U", POSTGRES_USER]
        _wait(
            lambda: subprocess.run(ready, capture_output=True, check=False).returncode == 0,
            "the private PostgreSQL",
        )
        subprocess.run(
            [_postgres_bin("createdb"), "-h", host.address, "-p", str(port), "-U", POSTGRES_USER, database],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg2://{POSTGRES_USER}@{host.address}:{port}/{database}"
    finally:
        _stop(server, signal.SIGINT)  # PostgreSQL's "fast shutdown"
        shutil.rmtree(own, ignore_errors=True)


@contextlib.contextmanager
def private_redis(host: Host, workdir: Path, port: int = 6379) -> Iterator[str]:
    """A Redis server of its own on ``host``, keeping nothing on disk; yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        host.command(
            shutil.which("redis-server") or "redis-server",
            "--bind",
            host.address,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            str(workdir),
        ),
        stdout=(workdir / "redis.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        ping = ["redis-cli", "-h", host.address, "-p", str(port), "ping"]
        _wait(
            lambda: (
                subprocess.run(ping, capture_output=True, text=True, check=False).stdout.strip() == "PONG"
            ),
            "the private Redis",
        )
        yield f"redis://{host.address}:{port}/0"
    finally:
        _stop(server)


def own_dirs(root: Path, name: str) -> dict[str, str]:
    """A component's own HOME, TMPDIR and working directory (no two components share a writable
    path), as environment variables; the working directory is ``root/name/work``."""
    paths = {key: root / name / key.lower() for key in ("HOME", "TMPDIR")}
    for path in (*paths.values(), root / name / "work"):
        path.mkdir(parents=True, exist_ok=True)
    return {key: str(path) for key, path in paths.items()} | {"PWD": str(root / name / "work")}


__all__ = ["own_dirs", "private_postgres", "private_redis"]


@contextlib.contextmanager
def deferral_safe_emulator(log_dir: Path) -> Iterator[Any]:
    """The emulator as a process, with jobs of 8 s. A trigger that fires within seconds of the
    deferral can meet Airflow's own race (apache/airflow#67287, #72716: the deferring process's exit
    event fails the resumed try); on this busy 2-core machine the scheduler was seen to take ~6 s to
    read that event, so jobs here outlast it."""
    from airflow_vibedream.emulator.process import EmulatorProcess
    from tests.conftest import TEST_KEY

    with EmulatorProcess(
        "--api-key", TEST_KEY, "--processing-seconds", "8", log_path=log_dir / "emulator.log"
    ) as process:
        yield process
