"""The emulator as a child process: started on a free port, stopped by its pid."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO

READY_PREFIX = "VibeDream emulator listening on "


class EmulatorProcess:
    """Start ``python -m airflow_vibedream.emulator`` and learn its URL from its first stdout line.

    :param args: extra command-line arguments (``--api-key``, ``--processing-seconds``, ...).
    :param log_path: file for the emulator's stderr; default: inherited.
    :param startup_timeout: seconds to wait for the ready line.
    :param host: the address to listen on (a test host's routed address, say).
    :param command_prefix: run the emulator through this command (e.g. ``ip netns exec <ns>``, which
        execs it, so the pid is still the emulator's).
    """

    def __init__(
        self,
        *args: str,
        log_path: Path | None = None,
        startup_timeout: float = 60.0,
        host: str = "127.0.0.1",
        command_prefix: tuple[str, ...] = (),
    ) -> None:
        self.args = list(args)
        self.host = host
        self.command_prefix = command_prefix
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        """None while it runs (or before it started), else how it exited."""
        return self._process.poll() if self._process else None

    def start(self) -> EmulatorProcess:
        self._log = self.log_path.open("a") if self.log_path else None
        self._process = subprocess.Popen(
            [
                *self.command_prefix,
                sys.executable,
                "-m",
                "airflow_vibedream.emulator",
                "--host",
                self.host,
                "--port",
                "0",
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self._process.stdout is not None
        # Wait for the ready line (an event), with a bound in case the child hangs before printing it.
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout=self.startup_timeout)
        line = self._process.stdout.readline() if ready else ""
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise RuntimeError(
                f"The emulator did not start (first output: {line!r}); see {self.log_path or 'stderr'}"
            )
        self.base_url = line[len(READY_PREFIX) :].strip()
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
