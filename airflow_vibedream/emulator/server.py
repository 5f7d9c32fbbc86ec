"""Run the emulator: in a background thread (tests, notebooks) or as a process (CLI)."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from airflow_vibedream.emulator.app import create_app
from airflow_vibedream.emulator.faults import EmulatedConnectionDrop
from airflow_vibedream.emulator.state import EmulatorConfig, EmulatorState


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen before serving, so the address is known (port 0 picks a free one) and a client
    that connects before uvicorn's loop starts waits in the backlog instead of being refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def base_url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _HideEmulatedDrops(logging.Filter):
    """An emulated dropped connection is the point, not an error worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], EmulatedConnectionDrop))


logging.getLogger("uvicorn.error").addFilter(_HideEmulatedDrops())


def serve(app: FastAPI) -> uvicorn.Server:
    uv_config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2
    )
    return uvicorn.Server(uv_config)


def build_server(config: EmulatorConfig, sock: socket.socket) -> uvicorn.Server:
    return serve(create_app(config, public_base_url=base_url_of(sock)))


class EmulatorServer:
    """The emulator on a free loopback port in a background thread.

    >>> with EmulatorServer(EmulatorConfig(api_key="k")) as emulator:
    ...     emulator.base_url  # 'http://127.0.0.1:54321'

    :param config: the emulator's behaviour.
    :param host: the address to listen on.
    :param port: the port; 0 picks a free one.
    """

    def __init__(
        self, config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or EmulatorConfig()
        self._sock = bind_socket(host, port)
        self.base_url = base_url_of(self._sock)
        self._app = create_app(self.config, public_base_url=self.base_url)
        self._server = serve(self._app)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def state(self) -> EmulatorState:
        state: EmulatorState = self._app.state.emulator
        return state

    @property
    def data_dir(self) -> Path:
        return self.state.data_dir

    def start(self) -> EmulatorServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
