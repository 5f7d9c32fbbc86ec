"""From the side of someone who can write into a local ``output_path`` but cannot read airflow.cfg:
links, FIFOs and huge files dropped among the ledger's documents leak no byte of what they point at
into the task log, stall nothing and cost a handful of short log lines; linked folders below
``output_path`` receive no write (the operation fails, or skips, loudly)."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.errors import UnsafeLocalPathError
from airflow_vibedream.files.storage import StoredOutput, persist_outputs, write_text_atomically
from airflow_vibedream.jobs.identity import s3_identity
from airflow_vibedream.jobs.ledger.documents import LEDGER_DIR, Ledger, LedgerEntry, TaskRef, new_entry
from airflow_vibedream.jobs.ledger.store import MAX_PAGE_BYTES, S3Store
from airflow_vibedream.jobs.signing import RecordSigner
from airflow_vibedream.tasks.manifest import manifest_uri
from tests.conftest import MotoS3
from tests.helpers import FakeTI
from tests.integration.emulated import jobs, upscale

SIGNER = RecordSigner("hostile-test-secret")
ASK = {"image": "s3://b/a.png", "target_resolution": "2k", "output_format": "png"}
ME = TaskRef(dag_id="dag", run_id="manual__1", task_id="upscale")
#: What the attacker wants out of airflow.cfg: none of it may reach a log.
SECRETS = ("fernet-7f3a9c0d1e2b4a5f", "webserver-secret-91b2c3d4", "postgres-pw-0a1b2c3d")
SECRET_FILE = "".join(
    f"[core]\nfernet_key = {SECRETS[0]}\n[api]\nsecret_key = {SECRETS[1]}\n"
    f"sql_alchemy_conn = postgresql://airflow:{SECRETS[2]}@db/airflow\n# line {i}\n"
    for i in range(50)
)
#: The start of the 100 MB page: not a byte of it in a log either.
BIG_PAGE_MARK = "BIG-PAGE-MARK-5e6f7a8b"
#: The longest a lookup may take among the traps (it takes milliseconds; a FIFO would hang it).
LOOKUP_SECONDS = 20.0


def ledger_of(output: Path) -> Ledger:
    return Ledger(str(output), None, SIGNER)


def intent(n: int) -> LedgerEntry:
    return new_entry("image-upscaler", ASK, s3_identity(f"etag{n}", 1000 + n), ME)


def in_thread(call: Callable[[], Any], seconds: float = LOOKUP_SECONDS) -> Any:
    """``call()``'s answer, or a failure if it has not answered within ``seconds`` (a stall)."""
    answer: dict[str, Any] = {}

    def run() -> None:
        try:
            answer["value"] = call()
        except BaseException as exc:
            answer["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"stalled for more than {seconds:g}s"
    if "error" in answer:
        raise answer["error"]
    return answer["value"]


def no_leak(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], *marks: str) -> list[str]:
    """Every log line written (records and the process's stdout/stderr, where Airflow's structlog
    writes), after checking none holds a byte of the secret file or of ``marks``."""
    captured = capfd.readouterr()
    texts = [record.getMessage() for record in caplog.records]
    everything = "\n".join([*texts, caplog.text, captured.out, captured.err])
    for secret in (*SECRETS, "fernet_key", "sql_alchemy_conn", *marks):
        assert secret not in everything, f"{secret!r} reached the log"
    return texts


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "airflow.cfg"
    path.write_text(SECRET_FILE)
    return path


@pytest.fixture
def trapped(tmp_path: Path, secret: Path) -> tuple[Ledger, list[LedgerEntry], LedgerEntry]:
    """A ledger with one genuine completed page and, around it, what the attacker dropped: links to
    airflow.cfg named like pages, entries (under wanted keys) and a group, a FIFO named like a page
    and like an entry, and a 100 MB one-line page."""
    output = tmp_path / "out"
    ledger = ledger_of(output)
    genuine = intent(0)
    image = output / "dag" / "kept.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\x89PNG kept")
    ledger.claim(genuine)
    done = ledger.completed(
        genuine.model_copy(update={"prediction_id": "p0"}),
        [StoredOutput(image.as_uri(), 9, _sha256(image.read_bytes()), 2048, 1536, "PNG")],
    )
    ledger.write_page([done])
    folder = output / LEDGER_DIR
    wanted = [intent(n) for n in range(1, 6)]
    for n in range(20):
        (folder / "pages" / f"20260101T0000{n:02d}-link.jsonl").symlink_to(secret)
    (folder / "entries" / f"{wanted[0].key}.json").symlink_to(secret)
    (folder / "groups").mkdir(exist_ok=True)
    (folder / "groups" / "linked.json").symlink_to(secret)
    os.mkfifo(folder / "pages" / "20260101T000100-fifo.jsonl")
    os.mkfifo(folder / "entries" / f"{wanted[1].key}.json")
    with (folder / "pages" / "20260101T000200-big.jsonl").open("wb") as big:
        big.write(BIG_PAGE_MARK.encode())
        big.truncate(100 * 1000 * 1000)  # sparse: 100 MB, one line, no disk
    return ledger, wanted, done


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# -- reads: nothing leaks, nothing stalls, little is said -----------------------------------------


def test_a_lookup_among_links_fifos_and_a_huge_page_leaks_nothing_and_does_not_stall(
    trapped: tuple[Ledger, list[LedgerEntry], LedgerEntry],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    ledger, wanted, done = trapped
    caplog.set_level(logging.DEBUG)
    found = in_thread(lambda: ledger.lookup([done.key, *(entry.key for entry in wanted)]))
    # The genuine page still counts; the traps are no entries.
    assert set(found) == {done.key} and found[done.key].prediction_id == "p0"
    texts = no_leak(caplog, capfd, BIG_PAGE_MARK)
    assert 1 <= len(texts) <= 5, texts
    assert all(len(text) <= 300 for text in texts), texts
    # The page over the cap is named, with why; the links and the FIFO in pages/ are counted, not read.
    assert any("20260101T000200-big.jsonl" in t and f"larger than {MAX_PAGE_BYTES} bytes" in t for t in texts)
    assert any("folder pages: 21 name(s) that are not regular files ignored" in t for t in texts)


def test_reading_a_linked_or_fifo_entry_or_group_by_name_is_refused_at_once(
    trapped: tuple[Ledger, list[LedgerEntry], LedgerEntry],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    ledger, wanted, _ = trapped
    caplog.set_level(logging.DEBUG)
    assert in_thread(lambda: ledger.read(wanted[0].key)) is None  # a link to airflow.cfg
    assert in_thread(lambda: ledger.read(wanted[1].key)) is None  # a FIFO: never waits for a writer
    assert in_thread(lambda: ledger.group_ids("linked")) == {}
    assert in_thread(lambda: ledger.store.read("pages/20260101T000100-fifo.jsonl")) is None
    texts = no_leak(caplog, capfd)
    assert len(texts) <= 5 and all(len(text) <= 300 for text in texts), texts
    assert any(f"entries/{wanted[0].key}.json" in t and "symbolic link" in t for t in texts)
    assert any(f"entries/{wanted[1].key}.json" in t and "not a regular file" in t for t in texts)


def test_a_listing_names_regular_files_only(trapped: tuple[Ledger, list[LedgerEntry], LedgerEntry]) -> None:
    ledger, _, _ = trapped
    assert len(ledger.store.names("pages")) == 2  # the genuine page and the big one (a regular file)
    assert ledger.store.names("entries") == [f"{intent(0).key}.json"]
    assert ledger.store.names("groups") == []


def test_a_group_name_never_leads_out_of_the_ledger(tmp_path: Path, secret: Path) -> None:
    (tmp_path / "out" / LEDGER_DIR / "groups").mkdir(parents=True)
    secret.rename(tmp_path / "stolen.json")
    # A group's name comes from an entry: "../../../stolen" would reach tmp_path/stolen.json.
    assert ledger_of(tmp_path / "out").store.read("groups/../../../stolen.json") is None


def test_an_s3_document_over_its_cap_is_not_read(
    moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import airflow_vibedream.jobs.ledger.store as ledger_store

    monkeypatch.setattr(ledger_store, "MAX_ENTRY_BYTES", 64)
    store = S3Store(f"s3://{moto_s3.bucket}/hostile-cap/{LEDGER_DIR}", "aws_default")
    store.put("entries/small.json", b"{}")
    store.put("entries/big.json", SECRET_FILE.encode())
    assert store.read("entries/small.json") == b"{}"
    assert store.read("entries/big.json") is None
    assert "entries/big.json skipped: is larger than 64 bytes" in caplog.text
    assert not any(secret in caplog.text for secret in SECRETS)


# -- writes: no linked folder below output_path is followed ----------------------------------------


def test_a_linked_ledger_folder_receives_no_write_and_the_claim_fails_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    output.mkdir()
    elsewhere.mkdir()
    (output / LEDGER_DIR).symlink_to(elsewhere, target_is_directory=True)
    ledger = ledger_of(output)
    with pytest.raises(UnsafeLocalPathError, match=f"{LEDGER_DIR} is a symbolic link") as raised:
        ledger.claim(intent(1))
    assert raised.value.reason == "is a symbolic link"
    with pytest.raises(UnsafeLocalPathError):
        ledger.write_page([intent(2)])
    with pytest.raises(UnsafeLocalPathError):
        ledger.store.put("groups/g.json", b"{}")
    assert list(elsewhere.iterdir()) == []
    # Reading through it finds nothing, and says so.
    assert ledger.lookup([intent(1).key]) == {}
    assert f"folder entries skipped: {LEDGER_DIR} is a symbolic link" in caplog.text


@pytest.mark.parametrize("linked", ["dag", "dag/manual__1", "dag/manual__1/upscale"])
def test_a_linked_output_folder_receives_no_output_and_no_manifest(tmp_path: Path, linked: str) -> None:
    output, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (output / linked).parent.mkdir(parents=True)
    elsewhere.mkdir()
    (output / linked).symlink_to(elsewhere, target_is_directory=True)
    data = "data:image/png;base64," + base64.b64encode(b"\x89PNG not judged").decode()
    with pytest.raises(UnsafeLocalPathError, match="is a symbolic link"):
        persist_outputs(
            [data],
            str(output),
            names={"dag_id": "dag", "run_id": "manual__1", "task_id": "upscale", "prediction_id": "p"},
        )
    manifest = manifest_uri(str(output), "dag", "manual__1", "upscale", None)
    with pytest.raises(UnsafeLocalPathError, match="is a symbolic link"):
        write_text_atomically(manifest, '{"status": "completed"}\n', root=str(output))
    assert list(elsewhere.iterdir()) == []


def test_a_link_at_the_final_name_is_replaced_never_written_through(tmp_path: Path, secret: Path) -> None:
    output = tmp_path / "out"
    folder = output / "dag" / "manual__1" / "upscale"
    folder.mkdir(parents=True)
    (folder / "manifest.jsonl").symlink_to(secret)
    manifest = manifest_uri(str(output), "dag", "manual__1", "upscale", None)
    write_text_atomically(manifest, '{"status": "completed"}\n', root=str(output))
    assert secret.read_text() == SECRET_FILE
    assert not (folder / "manifest.jsonl").is_symlink()
    assert json.loads((folder / "manifest.jsonl").read_text()) == {"status": "completed"}


def test_output_path_itself_may_be_a_link_the_deployment_made(tmp_path: Path) -> None:
    real = tmp_path / "volume"
    real.mkdir()
    (tmp_path / "out").symlink_to(real, target_is_directory=True)
    ledger = ledger_of(tmp_path / "out")
    assert ledger.claim(intent(1)) is None
    data = "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()
    [stored] = persist_outputs(
        [data],
        str(tmp_path / "out"),
        names={"dag_id": "dag", "run_id": "r", "task_id": "t", "prediction_id": "p"},
    )
    assert (real / LEDGER_DIR / "entries" / f"{intent(1).key}.json").is_file()
    assert (real / "dag" / "r" / "t" / "p-0.png").read_bytes() == b"\x89PNG"
    assert not list(real.glob("**/.*.partial")) and not list(real.glob("**/.*.tmp"))
    assert stored.bytes == 4


@pytest.mark.parametrize(
    ("linked", "paid"),
    [
        (FakeTI.dag_id, 1),  # fails storing its output (the job is in the ledger: a fixed path reuses it)
        (LEDGER_DIR, 0),  # fails claiming the image, before its submit
    ],
)
def test_an_upscale_with_a_linked_folder_fails_loudly_and_writes_nothing_there(
    vibedream_conn: EmulatorServer, tmp_path: Path, linked: str, paid: int
) -> None:
    output, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    output.mkdir()
    elsewhere.mkdir()
    (output / linked).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeLocalPathError, match=f"{linked} is a symbolic link"):
        upscale(vibedream_conn, output).execute({"ti": FakeTI()})
    assert jobs(vibedream_conn) == paid
    assert list(elsewhere.iterdir()) == []


def test_a_recorded_output_swapped_for_a_link_or_a_fifo_is_no_output(tmp_path: Path, secret: Path) -> None:
    from airflow_vibedream.jobs.ledger.store import stored_facts

    folder = tmp_path / "out" / "dag"
    folder.mkdir(parents=True)
    (folder / "kept.png").write_bytes(b"\x89PNG")
    (folder / "linked.png").symlink_to(secret)
    os.mkfifo(folder / "fifo.png")
    uris = [(folder / name).as_uri() for name in ("kept.png", "linked.png", "fifo.png")]
    facts = in_thread(lambda: stored_facts(uris, None))
    assert facts == {uris[0]: {"bytes": 4, "sha256": _sha256(b"\x89PNG")}}


def batch_into(emulator: EmulatorServer, output: Path) -> Any:
    from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator

    return VibeDreamBatchUpscaleOperator(
        task_id="upscale",
        images=[f"{emulator.base_url}/samples/{100 + i}x80.png" for i in range(3)],
        target_resolution="2k",
        output_format="jpeg",
        output_path=str(output),
        max_concurrency=2,
        poll_interval=0.1,
        deferrable=False,
    )


def test_a_batch_into_a_linked_dag_folder_fails_on_its_manifest_and_writes_nothing_there(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    output, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    output.mkdir()
    elsewhere.mkdir()
    (output / FakeTI.dag_id).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeLocalPathError, match="is a symbolic link"):
        batch_into(vibedream_conn, output).execute({"ti": FakeTI()})
    assert list(elsewhere.iterdir()) == []


def test_a_batch_with_a_linked_ledger_fails_before_it_pays_and_writes_nothing_there(
    vibedream_conn: EmulatorServer, tmp_path: Path
) -> None:
    output, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    output.mkdir()
    elsewhere.mkdir()
    (output / LEDGER_DIR).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeLocalPathError, match=f"{LEDGER_DIR} is a symbolic link"):
        batch_into(vibedream_conn, output).execute({"ti": FakeTI()})
    assert jobs(vibedream_conn) == 0
    assert list(elsewhere.iterdir()) == []
