"""``make dev`` as a newcomer uses it: started from a shell with no Airflow settings, the UI answers
with the login it printed, the example DAG and the DAG of docs/your-own-dag.md (dropped into the
DAGs folder) run against the emulator through the REST API, the gallery shows both images, and
Ctrl-C leaves no process and no port behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.cluster import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = "example_vibedream_upscale"
OWN = "my_first_upscale"


class MakeDev:
    """``make dev DEV_HOME=<home>`` in a session of its own, its output read line by line.

    :param home: the AIRFLOW_HOME it is given (kept, so the test can look inside).
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.lines: list[str] = []
        self.ready = threading.Event()
        # A newcomer's shell: none of the test session's Airflow settings.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VIBEDREAM", "MAKE"))}
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "dev", f"DEV_HOME={home}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # make and the script in a process group of their own, as in a terminal: Ctrl-C is a
            # SIGINT to that group.
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(("dev: ready", "dev: FAILED")):
                self.ready.set()
        self.ready.set()  # it ended: whoever waits learns it at once

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def said(self, pattern: str) -> re.Match[str]:
        found = re.search(pattern, self.output)
        assert found, f"not printed: {pattern}\n{self.output}"
        return found

    def ctrl_c(self, timeout: float = 120) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)


def processes_of(home: Path) -> list[int]:
    """Every live process whose environment says ``AIRFLOW_HOME=<home>``: whatever ``make dev``
    started, however deep (task runners, workers, log servers)."""
    marker = f"AIRFLOW_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue  # exited meanwhile, or not ours to read
    return found


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[MakeDev]:
    started = MakeDev(tmp_path / "home")
    try:
        yield started
    finally:
        if started.process.poll() is None:
            started.ctrl_c()
        # Should the script have failed to stop something, the test stops it: those are its own.
        for pid in processes_of(started.home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_make_dev_wires_airflow_to_the_emulator_and_ctrl_c_leaves_nothing(dev: MakeDev) -> None:
    began = time.monotonic()
    assert dev.ready.wait(timeout=420), dev.output
    ready_after = time.monotonic() - began
    ui, user, password = dev.said(r"UI:\s+(http://127\.0\.0\.1:\d+)\s+\(login: (\w+) / (\S+)\)").groups()
    emulator = dev.said(r"emulator:\s+(http://127\.0\.0\.1:\d+)")[1]
    dags = Path(dev.said(r"your DAGs: (\S+)")[1])
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", dev.output)]
    assert len(pids) == 5, dev.output  # the emulator and the four Airflow components

    # The UI answers, and the login printed is the one it accepts.
    page = httpx.get(ui, timeout=60)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    token = httpx.post(f"{ui}/auth/token", json={"username": user, "password": password}, timeout=60)
    assert token.status_code in (200, 201), token.text
    auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
    assert httpx.post(f"{ui}/auth/token", json={"username": user, "password": "wrong"}, timeout=60).is_error

    # Your own DAG, exactly as docs/your-own-dag.md shows it, dropped into the DAGs folder.
    guide = (REPO / "docs" / "your-own-dag.md").read_text()
    [own_dag] = re.findall(r"^```python\n(.*?)^```", guide, re.DOTALL | re.MULTILINE)
    (dags / f"{OWN}.py").write_text(own_dag)

    def api(method: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(method, f"{ui}/api/v2{path}", headers=auth, timeout=60, **kwargs)  # type: ignore[arg-type]

    runs = {}
    for dag_id in (EXAMPLE, OWN):
        wait_for(lambda d=dag_id: api("GET", f"/dags/{d}").status_code == 200, timeout=180, what=dag_id)
        assert api("PATCH", f"/dags/{dag_id}", json={"is_paused": False}).status_code == 200
        # No conf: the example's defaults are the emulator's test card and the gallery's root.
        started = api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None})
        assert started.status_code == 200, started.text
        runs[dag_id] = started.json()["dag_run_id"]
    for dag_id, run_id in runs.items():
        state = wait_for(
            lambda d=dag_id, r=run_id: (
                (s := api("GET", f"/dags/{d}/dagRuns/{r}").json()["state"]) in ("success", "failed") and s
            ),
            timeout=240,
            what=f"{dag_id} to finish",
        )
        assert state == "success", f"{dag_id}: {state}\n{dev.output}"
        result = api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/upscale/xcomEntries/return_value")
        output = result.json()["value"]
        assert output["status"] == "completed" and output["outputs"][0].startswith(
            f"file://{dev.home}/outputs/"
        )

    # The gallery shows both results, with thumbnails it makes from the stored images.
    emulator_stats = httpx.get(f"{emulator}/_emulator/stats", timeout=30).json()["counters"]
    assert emulator_stats["accepted_submissions"] == 2
    for dag_id in runs:
        gallery = httpx.get(f"{ui}/vibedream/gallery", params={"dag_id": dag_id}, headers=auth, timeout=60)
        assert gallery.status_code == 200
        thumbs = re.findall(r'<img[^>]+alt="output" src="([^"]+)"', gallery.text)
        assert len(thumbs) == 1, gallery.text[-2000:]
        thumb = httpx.get(f"{ui}/vibedream/{thumbs[0].replace('&amp;', '&')}", headers=auth, timeout=60)
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"

    ports = [int(url.rsplit(":", 1)[1]) for url in (ui, emulator)]
    assert not any(port_is_free(port) for port in ports)
    dev.ctrl_c()
    assert "dev: SIGINT: stopping" in dev.output and "dev: stopped" in dev.output, dev.output
    assert processes_of(dev.home) == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert all(port_is_free(port) for port in ports)
    print(f"make dev: ready after {ready_after:.0f}s, the whole test {time.monotonic() - began:.0f}s")
