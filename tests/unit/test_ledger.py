"""The ledger's documents, its identity rules and its decision table (a local store in a temporary
folder; the operators drive it over real HTTP and S3 in tests/integration/test_ledger.py)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from airflow_vibedream.files.storage import StoredOutput
from airflow_vibedream.jobs.identity import ContentIdentity, decisive_ask, ledger_key, s3_identity
from airflow_vibedream.jobs.ledger.decision import (
    KNOWN_BAD,
    NEW,
    RECONNECT,
    REUSE,
    UNKNOWN,
    decide,
)
from airflow_vibedream.jobs.ledger.documents import (
    COMPLETED,
    FAILED,
    SUBMITTED,
    GroupJournal,
    Ledger,
    LedgerEntry,
    LedgerOutput,
    TaskRef,
    new_entry,
)
from airflow_vibedream.jobs.ledger.store import LocalStore, intact
from airflow_vibedream.jobs.signing import RecordSigner

SIGNER = RecordSigner("test-record-secret")

ASK = {"image": "s3://b/a.png", "target_resolution": "2k", "output_format": "png", "enable_sync_mode": False}
BYTES = s3_identity('"abc123"', 1000)
ME = TaskRef(dag_id="d", run_id="r1", task_id="t")
OTHER = TaskRef(dag_id="d", run_id="r0", task_id="t")


# -- identity ---------------------------------------------------------------------------------------


def test_the_same_bytes_under_another_name_have_the_same_key() -> None:
    renamed = {**ASK, "image": "s3://other-bucket/copy.png"}
    assert ledger_key("image-upscaler", ASK, BYTES) == ledger_key("image-upscaler", renamed, BYTES)


@pytest.mark.parametrize(
    ("change", "identity"),
    [
        ({}, s3_identity("other-etag", 1000)),  # other bytes under the same name
        ({}, s3_identity("abc123", 1001)),
        ({"target_resolution": "4k"}, BYTES),
        ({"output_format": "jpeg"}, BYTES),
    ],
)
def test_anything_that_decides_the_output_changes_the_key(
    change: dict[str, Any], identity: ContentIdentity
) -> None:
    assert ledger_key("image-upscaler", ASK, BYTES) != ledger_key(
        "image-upscaler", {**ASK, **change}, identity
    )


def test_delivery_flags_and_the_name_do_not_decide_the_output() -> None:
    assert decisive_ask({**ASK, "enable_base64_output": True}) == {
        "target_resolution": "2k",
        "output_format": "png",
    }
    assert ledger_key("m", ASK, BYTES) != ledger_key("other-model", ASK, BYTES)


def test_s3_identity_reads_etags_as_s3_writes_them() -> None:
    assert s3_identity('"abc"', 5).token == "s3-etag:abc:5"
    assert s3_identity("abc", 5, "null").version is None and s3_identity("abc", 5, "v1").version == "v1"
    assert s3_identity("abc", 5).token != ContentIdentity("sha256", "abc", 5).token


# -- the decision table -----------------------------------------------------------------------------


def entry(state: str, *, prediction_id: str | None = None, task: TaskRef = OTHER) -> LedgerEntry:
    base = new_entry("image-upscaler", ASK, BYTES, task)
    return base.model_copy(update={"state": state, "prediction_id": prediction_id})


@pytest.mark.parametrize(
    ("found", "reuse", "resubmit", "outputs_intact", "expected"),
    [
        (None, True, False, False, NEW),
        (entry(COMPLETED, prediction_id="p"), True, False, True, REUSE),
        (entry(COMPLETED, prediction_id="p"), True, False, False, RECONNECT),  # outputs changed: ask the API
        (entry(SUBMITTED, prediction_id="p"), True, False, False, RECONNECT),
        (entry("intent"), True, False, False, UNKNOWN),
        (entry("intent"), True, True, False, NEW),  # resubmit_unknown=True
        (entry(COMPLETED, prediction_id="p"), False, False, True, NEW),  # a deliberate re-run pays
        (entry(SUBMITTED, prediction_id="p", task=ME), False, False, False, RECONNECT),  # its own job
        (entry("intent", task=ME), False, False, False, UNKNOWN),  # even its own: it may be billed
    ],
)
def test_decide(
    found: LedgerEntry | None, reuse: bool, resubmit: bool, outputs_intact: bool, expected: str
) -> None:
    decision = decide(found, ME, reuse=reuse, resubmit_unknown=resubmit, outputs_intact=outputs_intact)
    assert decision.kind == expected


@pytest.mark.parametrize("reuse", [True, False])
def test_a_known_bad_input_is_skipped_unless_failures_are_retried(reuse: bool) -> None:
    bad = entry(FAILED, prediction_id="p").model_copy(update={"reason": "could not be decoded"})
    # A deliberate re-run (reuse=False) would only buy the same failure: skipped all the same.
    skipped = decide(bad, ME, reuse=reuse, resubmit_unknown=False, outputs_intact=False)
    assert (skipped.kind, skipped.entry) == (KNOWN_BAD, bad)
    retried = decide(bad, ME, reuse=reuse, resubmit_unknown=False, outputs_intact=False, retry_failed=True)
    assert retried.kind == NEW and retried.entry == bad  # replaced by the new intent


def test_a_fresh_intent_is_followed_an_old_one_is_unknown() -> None:
    assert entry("intent").is_fresh_intent()
    assert (
        not entry("intent").model_copy(update={"updated_at": "2026-01-01T00:00:00+00:00"}).is_fresh_intent()
    )
    assert not entry(SUBMITTED, prediction_id="p").is_fresh_intent()


# -- documents and the local store --------------------------------------------------------------------


def test_an_entry_is_a_small_readable_json_document(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path), None, SIGNER)
    intent = new_entry("image-upscaler", ASK, BYTES, ME)
    assert ledger.claim(intent) is None
    path = tmp_path / "_vibedream_ledger" / "entries" / f"{intent.key}.json"
    document = json.loads(path.read_text())
    assert document["state"] == "intent" and document["input"] == "s3://b/a.png"
    assert document["ask"] == {"target_resolution": "2k", "output_format": "png"}
    assert document["identity"] == {"kind": "s3-etag", "value": "abc123", "size": 1000}
    assert document["task"]["run_id"] == "r1" and "prediction_id" not in document
    assert ledger.entry_uri(intent.key) == path.as_uri()


def test_a_claim_is_won_once_even_by_racing_threads(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(lambda i: store.create("entries/k.json", f"{i}".encode()), range(32)))
    assert wins.count(True) == 1
    assert (tmp_path / "entries" / "k.json").read_text() in {str(i) for i in range(32)}
    assert store.names("entries") == ["k.json"]  # no temporary left behind


def test_the_losing_claim_gets_the_winners_entry(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path), None, SIGNER)
    first = new_entry("image-upscaler", ASK, BYTES, OTHER)
    assert ledger.claim(first) is None
    held = ledger.claim(new_entry("image-upscaler", ASK, BYTES, ME))
    assert held is not None and held.task == OTHER


def test_an_unreadable_entry_is_ignored_not_trusted(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path), None, SIGNER)
    key = new_entry("image-upscaler", ASK, BYTES, ME).key
    (tmp_path / "_vibedream_ledger" / "entries").mkdir(parents=True)
    (tmp_path / "_vibedream_ledger" / "entries" / f"{key}.json").write_text('{"state": "completed"}')
    assert ledger.read(key) is None


def test_a_batch_intent_finds_its_id_in_the_group_journal(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path), None, SIGNER)
    journal = GroupJournal(ledger, ME, every=3600)
    intent = new_entry("image-upscaler", ASK, BYTES, ME, group=journal.name)
    ledger.claim(intent)
    assert ledger.read(intent.key).prediction_id is None  # type: ignore[union-attr]
    journal.add(intent.key, "pred-1", 2)  # the first id is written at once
    found = ledger.read(intent.key)
    assert found is not None and (found.state, found.prediction_id, found.cost_cents) == (
        SUBMITTED,
        "pred-1",
        2,
    )


def stored(tmp_path: Path, name: str, data: bytes) -> StoredOutput:
    import hashlib

    path = tmp_path / name
    path.write_bytes(data)
    return StoredOutput(path.as_uri(), len(data), hashlib.sha256(data).hexdigest(), 2048, 1536, "PNG")


class CountingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def read(self, name: str) -> bytes | None:
        self.reads.append(name)
        return super().read(name)


def test_a_batch_lookup_reads_pages_not_one_entry_per_image(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "out"), None, SIGNER)
    completed = []
    for i in range(50):
        identity = s3_identity(f"etag{i}", 1000)
        intent = new_entry("image-upscaler", ASK, identity, OTHER, group="g")
        ledger.claim(intent)
        completed.append(
            (intent.model_copy(update={"prediction_id": f"p{i}"}), [stored(tmp_path, f"{i}.png", b"x" * i)])
        )
    ledger.write_page(ledger.completed_many(completed))
    counting = CountingStore(ledger.store.root)  # type: ignore[attr-defined]
    ledger.store = counting
    found = ledger.lookup(entry.key for entry, _ in completed)
    assert len(found) == 50 and all(e.state == COMPLETED for e in found.values())
    assert [name for name in counting.reads if not name.startswith("pages/")] == []
    assert all(ledger.outputs_intact(found.values()).values())


def test_outputs_are_intact_only_with_the_recorded_size_and_hash(tmp_path: Path) -> None:
    out = stored(tmp_path, "o.png", b"image")
    recorded = LedgerOutput(uri=out.uri, bytes=out.bytes, sha256=out.sha256).facts()
    assert intact(recorded, {"bytes": 5, "sha256": out.sha256})
    assert not intact(recorded, None)
    assert not intact(recorded, {"bytes": 6, "sha256": out.sha256})
    assert not intact(recorded, {"bytes": 5, "sha256": "0" * 64})
    assert not intact({**recorded, "etag": "a"}, {"bytes": 5, "etag": "b"})
    assert not intact(recorded, {"bytes": 5, "etag": "b"})  # an S3 output recorded without its ETag


# -- documents written by someone else (whoever can write into output_path) --------------------------

VICTIM = s3_identity('"victim"', 5000)  # the image a later run asks about
ATTACKER = s3_identity('"attacker"', 7000)  # another image, whose upscale the attacker wants reused


def completed_entry(tmp_path: Path, identity: ContentIdentity, name: str, edge: int = 2048) -> LedgerEntry:
    import hashlib

    path = tmp_path / name
    path.write_bytes(b"pixels of " + name.encode())
    data = path.read_bytes()
    out = StoredOutput(path.as_uri(), len(data), hashlib.sha256(data).hexdigest(), edge, edge * 3 // 4, "PNG")
    entry = new_entry("image-upscaler", ASK, identity, OTHER).moved_to(SUBMITTED, prediction_id="p-" + name)
    return Ledger(str(tmp_path), None, SIGNER).completed(entry, [out])


def entries_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "_vibedream_ledger" / "entries"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_an_unsigned_entry_under_the_victims_key_is_no_entry_and_never_blocks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(str(tmp_path), None, SIGNER)
    forged = completed_entry(tmp_path, VICTIM, "forged.png")  # right key, right content, no MAC
    (entries_dir(tmp_path) / f"{forged.key}.json").write_text(forged.model_dump_json())
    assert ledger.read(forged.key) is None
    assert ledger.lookup([forged.key]) == {}
    assert "MAC does not verify" in caplog.text
    # Nor does it hold the image: the claim replaces it with this task's intent.
    intent = new_entry("image-upscaler", ASK, VICTIM, ME)
    assert ledger.claim(intent) is None
    assert ledger.read(intent.key) == intent


def test_a_signed_entry_copied_under_another_images_key_is_refused(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path), None, SIGNER)
    genuine = completed_entry(tmp_path, ATTACKER, "attacker.png")  # signed: a real earlier job
    victim_key = new_entry("image-upscaler", ASK, VICTIM, ME).key
    # The whole signed document, under the victim's name; then with its key rewritten and re-signed
    # by someone without the secret (impossible), and as a signed page line.
    (entries_dir(tmp_path) / f"{victim_key}.json").write_bytes(ledger.dumps(genuine))
    assert ledger.read(victim_key) is None
    assert ledger.lookup([victim_key]) == {}
    relabelled = genuine.model_copy(update={"key": victim_key})
    forged_line = json.dumps({**relabelled.model_dump(mode="json"), "mac": SIGNER.mac({"x": 1})})
    pages = tmp_path / "_vibedream_ledger" / "pages"
    pages.mkdir(parents=True)
    (pages / "p.jsonl").write_text(forged_line + "\n")
    assert victim_key not in ledger.lookup([victim_key])


def test_a_page_entry_signed_but_not_for_what_it_claims_is_refused(tmp_path: Path) -> None:
    # Even a document with a valid MAC (say, signed by a deployment that shares the secret but has
    # a bug) is only accepted under the key that is the hash of its own content.
    ledger = Ledger(str(tmp_path), None, SIGNER)
    genuine = completed_entry(tmp_path, ATTACKER, "attacker.png")
    victim_key = new_entry("image-upscaler", ASK, VICTIM, ME).key
    relabelled = genuine.model_copy(update={"key": victim_key})
    pages = tmp_path / "_vibedream_ledger" / "pages"
    pages.mkdir(parents=True)
    (pages / "p.jsonl").write_bytes(ledger.dumps(relabelled))
    assert ledger.lookup([victim_key]) == {}


@pytest.mark.parametrize(
    ("change", "serves"),
    [({}, True), ({"format": "JPEG"}, False), ({"width": 1024, "height": 768}, False)],
    ids=["as asked", "another format", "another long edge"],
)
def test_reuse_needs_outputs_verified_as_what_the_ask_asks(
    tmp_path: Path, change: dict[str, Any], serves: bool
) -> None:
    ledger = Ledger(str(tmp_path), None, SIGNER)
    entry = completed_entry(tmp_path, VICTIM, "out.png")
    entry = entry.model_copy(update={"outputs": [entry.outputs[0].model_copy(update=change)]})
    assert ledger.outputs_intact([entry])[entry.key] is serves


def test_a_group_document_not_signed_names_no_ids(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path), None, SIGNER)
    intent = new_entry("image-upscaler", ASK, VICTIM, ME, group="g1")
    ledger.claim(intent)
    groups = tmp_path / "_vibedream_ledger" / "groups"
    groups.mkdir(parents=True)
    (groups / "g1.json").write_text(json.dumps({"predictions": {intent.key: {"prediction_id": "stolen"}}}))
    found = ledger.read(intent.key)
    assert found is not None and found.prediction_id is None


def test_an_output_swapped_for_a_huge_sparse_file_is_not_read_at_all(tmp_path: Path) -> None:
    from airflow_vibedream.jobs.ledger.store import stored_facts

    ledger = Ledger(str(tmp_path), None, SIGNER)
    entry = completed_entry(tmp_path, VICTIM, "out.png")
    output = Path(entry.outputs[0].uri.removeprefix("file://"))
    with output.open("r+b") as handle:
        handle.truncate(8 * 1024**3)  # 8 GiB of nothing on disk: hashing it took 17 s
    recorded = {entry.outputs[0].uri: entry.outputs[0].bytes}
    assert stored_facts(recorded, None, recorded_sizes=recorded)[entry.outputs[0].uri]["sha256"] is None
    assert ledger.outputs_intact([entry]) == {entry.key: False}


def test_a_page_of_junk_lines_is_abandoned_after_a_hundred(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(str(tmp_path), None, SIGNER)
    genuine = completed_entry(tmp_path, VICTIM, "out.png")
    pages = tmp_path / "_vibedream_ledger" / "pages"
    pages.mkdir(parents=True)
    (pages / "a-genuine.jsonl").write_bytes(ledger.dumps(genuine))
    (pages / "b-junk.jsonl").write_bytes(b"12\n" * 500_000)  # 22 million of these took 100 s and 1.2 GiB
    parsed: list[str] = []
    real_parse = ledger._parse
    monkeypatch.setattr(
        ledger, "_parse", lambda data, name, key=None: parsed.append(name) or real_parse(data, name, key)
    )
    found = ledger.lookup([genuine.key])
    assert found[genuine.key].prediction_id == genuine.prediction_id  # the genuine page still counts
    assert parsed.count("pages/b-junk.jsonl") == 100
    assert "VibeDream ledger page b-junk.jsonl abandoned" in caplog.text
