"""The ledger: pay once per image, ever. Small JSON documents beside the outputs, under
``<output_path>/_vibedream_ledger/``, that outlive task instances, DAG runs, database resets and
Airflow upgrades (and exist on Airflow 3.1 and 3.2, which have no ``task_state_store``).

- ``entries/<key>.json``: one image-and-ask (the key: :func:`.identity.ledger_key`). Created
  atomically as an *intent* before its paid POST (the claim: two tasks reaching the same new image
  make one job), then ``submitted`` (id, cost) and, for single-image tasks, ``completed`` (outputs).
- ``groups/<group>.json``: a batch's ids and costs as they return, for the intents it claimed as
  one group (one document per group, rewritten at most every second, not one write per image).
- ``pages/<page>.jsonl``: a finished batch's completed images, one entry per line, so the next batch
  over the same images finds them all with a listing and a few reads.

An intent whose id never got recorded means *submission state unknown*: the job may exist and be
billed. It is never sent again automatically.

Whoever can write into ``output_path`` can write these documents, so each one (each line of a page)
is signed (:mod:`.signing`) and read only when its MAC verifies and its key is the hash of what it
says it is for (model, ask and the input's identity): a forged or altered entry is no entry, and an
entry is only ever found under the key of the very image and ask it records.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from airflow_vibedream.files.storage import StoredOutput, storage_uri
from airflow_vibedream.files.verify import FORMAT_NAMES, LONG_EDGES
from airflow_vibedream.jobs.identity import ContentIdentity, decisive_ask, ledger_key
from airflow_vibedream.jobs.ledger.store import LedgerStore, intact, open_store, stored_facts
from airflow_vibedream.jobs.signing import RecordSigner

log = logging.getLogger(__name__)

#: The reserved folder under ``output_path``.
LEDGER_DIR = "_vibedream_ledger"

State = Literal["intent", "submitted", "completed", "failed"]
INTENT: State = "intent"
SUBMITTED: State = "submitted"
COMPLETED: State = "completed"
#: A known-bad input: its job failed (or it was refused) for a reason those bytes will always give.
#: Later runs skip it at no cost, with the reason, unless asked to retry failures.
FAILED: State = "failed"

#: Reads of entries and outputs at once (each is one small request).
LOOKUP_THREADS = 16
#: Lines of one page that are no entry (junk, forged, altered) before the rest of it is skipped.
MAX_REFUSED_LINES = 100
#: The longest to wait for another task's fresh claim to record its job's id, seconds.
CLAIM_WAIT = 30.0


class TaskRef(BaseModel):
    """The task instance that wrote an entry (for people, and to let a retry of the same task
    instance reconnect to its own job even when reuse is off)."""

    model_config = ConfigDict(extra="ignore")

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int | None = None

    @classmethod
    def of(cls, ti: Any) -> TaskRef:
        map_index = getattr(ti, "map_index", -1)
        return cls(
            dag_id=str(ti.dag_id),
            run_id=str(ti.run_id),
            task_id=str(ti.task_id),
            map_index=-1 if map_index is None else int(map_index),
            try_number=getattr(ti, "try_number", None),
        )

    def same_instance(self, other: TaskRef) -> bool:
        return (self.dag_id, self.run_id, self.task_id, self.map_index) == (
            other.dag_id,
            other.run_id,
            other.task_id,
            other.map_index,
        )


class LedgerOutput(BaseModel):
    """One stored output: where, how big, and its hash (SHA-256; S3's ETag for ``s3://``)."""

    model_config = ConfigDict(extra="ignore")

    uri: str
    bytes: int
    sha256: str
    etag: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None

    def facts(self) -> dict[str, Any]:
        return self.model_dump(include={"bytes", "sha256", "etag"}, exclude_none=True)


class LedgerEntry(BaseModel):
    """One image-and-ask.

    :param key: SHA-256 of the model, the decisive ask and the input's content identity.
    :param state: ``intent`` (about to POST), ``submitted`` (id known), ``completed`` (outputs stored)
        or ``failed`` (a known-bad input: ``reason`` says why).
    :param model_id: the model.
    :param ask: what decides the output besides the input (resolution, format...).
    :param input: the input as named when the entry was written.
    :param identity: the input's content identity (kind, value, size[, version]).
    :param prediction_id: the job's id, once known.
    :param cost_cents: the submit's cost, once known.
    :param group: the batch group whose document carries the id (batch intents).
    :param outputs: the stored outputs (completed).
    :param reason: why the input is known bad (failed).
    :param task: who wrote it.
    :param updated_at: when (UTC, ISO 8601).
    """

    model_config = ConfigDict(extra="ignore")

    version: int = 1
    key: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    state: State
    model_id: str
    ask: dict[str, Any]
    input: str
    identity: dict[str, Any]
    prediction_id: str | None = None
    cost_cents: int | None = None
    group: str | None = None
    outputs: list[LedgerOutput] = []
    reason: Annotated[str | None, Field(max_length=2000)] = None
    task: TaskRef
    updated_at: str = ""

    def is_fresh_intent(self) -> bool:
        """An intent with no id written in the last :data:`CLAIM_WAIT` seconds: another task is
        most likely submitting it right now (follow it), not one that died mid-submit (unknown)."""
        if self.state != INTENT or self.prediction_id:
            return False
        try:
            written = datetime.fromisoformat(self.updated_at)
        except ValueError:
            return False
        return (datetime.now(timezone.utc) - written).total_seconds() < CLAIM_WAIT

    def moved_to(self, state: State, **changes: Any) -> LedgerEntry:
        return self.model_copy(update={"state": state, "updated_at": _now(), **changes})

    def key_matches_content(self) -> bool:
        """True when ``key`` is the hash of this entry's own model, ask and input identity: an entry
        copied under another image's key (to be reused for it) is refused by this alone."""
        identity = self.identity
        if not (
            isinstance(identity.get("kind"), str)
            and isinstance(identity.get("value"), str)
            and isinstance(identity.get("size"), int)
        ):
            return False
        token = ContentIdentity(identity["kind"], identity["value"], identity["size"])
        return ledger_key(self.model_id, self.ask, token) == self.key


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_entry(
    model_id: str,
    asked: Mapping[str, Any],
    identity: ContentIdentity,
    task: TaskRef,
    *,
    group: str | None = None,
) -> LedgerEntry:
    """The intent for one image-and-ask, written before its POST."""
    return LedgerEntry(
        key=ledger_key(model_id, asked, identity),
        state=INTENT,
        model_id=model_id,
        ask=decisive_ask(asked),
        input=str(asked.get("image", "")),
        identity=identity.to_json(),
        group=group,
        task=task,
        updated_at=_now(),
    )


def _where(exc: ValidationError) -> str:
    """Which field failed and how, never the value: a document may be anything at all (a link to a
    secrets file), and a task log is read by every viewer of the DAG."""
    first = exc.errors(include_input=False, include_url=False)[0]
    return f"{'.'.join(str(part) for part in first['loc']) or 'document'}: {first['type']}"


# -- what reuse needs of an entry ---------------------------------------------------------------------


def serves_its_ask(entry: LedgerEntry) -> bool:
    """True when every recorded output is what the entry's ask asks: the asked format and the
    target's long edge (upscales), as verified when it was stored. An entry without those facts
    (or with others) is not reused: paying again beats handing on the wrong image."""
    fmt, resolution = entry.ask.get("output_format"), entry.ask.get("target_resolution")
    name = FORMAT_NAMES.get(fmt) if isinstance(fmt, str) else None
    edge = LONG_EDGES.get(resolution) if isinstance(resolution, str) else None
    for out in entry.outputs:
        if name is not None and out.format != name:
            return False
        if edge is not None and max(out.width or 0, out.height or 0) != edge:
            return False
    return True


# -- the ledger -------------------------------------------------------------------------------------


class Ledger:
    """The ledger of one ``output_path``.

    :param output_path: the operator's ``output_path`` (the ledger lives in its ``_vibedream_ledger/``).
    :param conn_id: the connection of that store (as for the outputs).
    """

    def __init__(self, output_path: str, conn_id: str | None, signer: RecordSigner) -> None:
        self.root_uri = f"{storage_uri(output_path).rstrip('/')}/{LEDGER_DIR}"
        self.conn_id = conn_id
        self.store: LedgerStore = open_store(self.root_uri, conn_id)
        self.signer = signer
        self._refused = 0  # documents ignored this run (said once, then counted)

    # -- signed documents --

    def dumps(self, entry: LedgerEntry) -> bytes:
        """One entry, signed, as one line."""
        signed = self.signer.signed(entry.model_dump(mode="json", exclude_none=True))
        return (json.dumps(signed, separators=(",", ":")) + "\n").encode()

    def _parse(self, data: bytes | None, name: str, key: str | None = None) -> LedgerEntry | None:
        """The entry in ``data`` when it is one this deployment signed for what it says (and, read
        by ``key``, is that key's: a genuine entry copied to another image's name is not that
        image's); else None (the image is then new to the ledger), said in the log by ``name`` only."""
        if data is None:
            return None
        try:
            document = self.signer.verified(json.loads(data))
        except (ValueError, RecursionError):
            return self._refuse(name, "not JSON")
        if document is None:
            return self._refuse(name, "its MAC does not verify (not written by this deployment)")
        try:
            entry = LedgerEntry.model_validate(document)
        except ValidationError as exc:
            return self._refuse(name, _where(exc))
        if not entry.key_matches_content() or (key is not None and entry.key != key):
            return self._refuse(name, "its key is not the hash of the image and ask it records")
        return entry

    def _refuse(self, name: str, why: str) -> LedgerEntry | None:
        """Say (the first few times) that a document is ignored, by name and why: None."""
        self._refused += 1
        if self._refused <= 3:  # a folder of junk must not become a log of junk
            log.warning("VibeDream ledger document %s ignored: %s", name, why)
        elif self._refused == 4:
            log.warning("More VibeDream ledger documents ignored; not listing them")
        return None

    def entry_uri(self, key: str) -> str:
        return f"{self.root_uri}/entries/{key}.json"

    # -- single entries --

    def read(self, key: str) -> LedgerEntry | None:
        """The entry, with a batch intent's id filled in from its group document when there."""
        entry = self._parse(self.store.read(f"entries/{key}.json"), f"entries/{key}.json", key)
        if entry is not None and entry.state == INTENT and entry.group:
            found = self.group_ids(entry.group).get(key)
            if found:
                entry = entry.moved_to(SUBMITTED, prediction_id=found[0], cost_cents=found[1])
        return entry

    def claim(self, entry: LedgerEntry) -> LedgerEntry | None:
        """Create ``entry`` (an intent) if no entry has its key; else the entry that is there. A
        document there that is no entry of this deployment's (forged, altered, unreadable) is
        replaced: it proves no job, and must not block the image either."""
        if self.store.create(f"entries/{entry.key}.json", self.dumps(entry)):
            return None
        held = self.read(entry.key)
        if held is None:
            self.write(entry)
        return held

    def write(self, entry: LedgerEntry) -> None:
        self.store.put(f"entries/{entry.key}.json", self.dumps(entry))

    def delete(self, key: str) -> None:
        """Withdraw an intent whose submit surely made no job."""
        self.store.delete(f"entries/{key}.json")

    def outputs_intact(self, entries: Iterable[LedgerEntry]) -> dict[str, bool]:
        """For each completed entry: are all its outputs still there with the recorded size and hash,
        and were they verified as what its ask asks (format, long edge)? Only then may they be
        handed downstream as this image's result."""
        completed = [entry for entry in entries if entry.state == COMPLETED and entry.outputs]
        recorded = {out.uri: out.bytes for entry in completed for out in entry.outputs}
        now = stored_facts(recorded, self.conn_id, recorded_sizes=recorded)
        return {
            entry.key: serves_its_ask(entry)
            and all(intact(out.facts(), now.get(out.uri)) for out in entry.outputs)
            for entry in completed
        }

    def completed(self, entry: LedgerEntry, stored: list[StoredOutput]) -> LedgerEntry:
        """The entry with its stored outputs (and their S3 ETags, read with one listing per folder)."""
        return self.completed_many([(entry, stored)])[0]

    def completed_many(self, pairs: list[tuple[LedgerEntry, list[StoredOutput]]]) -> list[LedgerEntry]:
        """Many entries completed at once: one listing per output folder for all of them."""
        uris = [item.uri for _, stored in pairs for item in stored if item.uri.startswith("s3://")]
        now = stored_facts(uris, self.conn_id)
        return [
            entry.moved_to(
                COMPLETED,
                outputs=[
                    LedgerOutput(
                        uri=item.uri,
                        bytes=item.bytes,
                        sha256=item.sha256,
                        etag=now.get(item.uri, {}).get("etag"),
                        width=item.width,
                        height=item.height,
                        format=item.format,
                    )
                    for item in stored
                ],
            )
            for entry, stored in pairs
        ]

    # -- batches --

    def group_ids(self, group: str) -> dict[str, tuple[str, int | None]]:
        name = f"groups/{group}.json"
        data = self.store.read(name)
        if not data:
            return {}
        try:
            doc = self.signer.verified(json.loads(data))
        except (ValueError, RecursionError):
            doc = None
        predictions = doc.get("predictions") if doc is not None else None
        if not isinstance(predictions, dict):
            self._refuse(name, "not a group document signed by this deployment")
            return {}
        return {
            key: (value["prediction_id"], cost if isinstance(cost := value.get("cost_cents"), int) else None)
            for key, value in predictions.items()
            if isinstance(value, dict) and isinstance(value.get("prediction_id"), str)
        }

    def lookup(self, keys: Iterable[str]) -> dict[str, LedgerEntry]:
        """The entries of many keys: one listing of ``entries/``, the completed pages (a few reads),
        and a read only for the keys with an entry that no page settles."""
        wanted = set(keys)
        present = {name.removesuffix(".json") for name in self.store.names("entries")} & wanted
        found: dict[str, LedgerEntry] = {}
        for name in sorted(self.store.names("pages")):
            for entry in self._page(name):
                if entry.key in wanted and entry.updated_at >= getattr(
                    found.get(entry.key), "updated_at", ""
                ):
                    found[entry.key] = entry
        intact_now = self.outputs_intact(found.values())
        to_read = [key for key in present if not intact_now.get(key)]
        groups: dict[str, dict[str, tuple[str, int | None]]] = {}
        lock = threading.Lock()

        def read_one(key: str) -> LedgerEntry | None:
            entry = self._parse(self.store.read(f"entries/{key}.json"), f"entries/{key}.json", key)
            if entry is None or entry.state != INTENT or not entry.group:
                return entry
            with lock:
                ids = groups.get(entry.group)
            if ids is None:
                ids = self.group_ids(entry.group)
                with lock:
                    groups[entry.group] = ids
            if key in ids:
                return entry.moved_to(SUBMITTED, prediction_id=ids[key][0], cost_cents=ids[key][1])
            return entry

        with ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="vibedream-ledger") as pool:
            for key, read in zip(to_read, pool.map(read_one, to_read), strict=True):
                if read is not None:  # the entry itself says more than a page whose outputs changed
                    found[key] = read
        return found

    def _page(self, name: str) -> Iterator[LedgerEntry]:
        """A page's entries, a line at a time (a page of millions of tiny junk lines must not become
        millions of objects at once); a page whose lines are no entries of this deployment's is
        abandoned after :data:`MAX_REFUSED_LINES` of them (its remaining images are then found
        through their own entries, or paid again: never taken from junk)."""
        refused = 0
        for raw in io.BytesIO(self.store.read(f"pages/{name}") or b""):
            line = raw.strip()
            if not line:
                continue
            entry = self._parse(line, f"pages/{name}")
            if entry is not None:
                yield entry
                continue
            refused += 1
            if refused >= MAX_REFUSED_LINES:
                log.warning(
                    "VibeDream ledger page %s abandoned: %d of its lines are no entries of this deployment",
                    name,
                    refused,
                )
                return

    def claim_many(self, entries: list[LedgerEntry]) -> dict[str, LedgerEntry | None]:
        """Claim a group's intents at once (in parallel): ``{key: None}`` when claimed, else the
        entry another task holds."""
        with ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="vibedream-ledger") as pool:
            return dict(zip((e.key for e in entries), pool.map(self.claim, entries), strict=True))

    def write_many(self, entries: list[LedgerEntry]) -> None:
        with ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="vibedream-ledger") as pool:
            list(pool.map(self.write, entries))

    def write_page(self, entries: list[LedgerEntry]) -> None:
        """A finished batch's completed entries, in one document."""
        if entries:
            name = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}.jsonl"
            self.store.put(f"pages/{name}", b"".join(self.dumps(entry) for entry in entries))


class GroupJournal:
    """A batch group's ids and costs as they return, in one document rewritten at most every
    ``every`` seconds (and at :meth:`flush`): the intents name the group, so a later try finds each
    id without one write per image.

    :param ledger: the ledger.
    :param task: who writes it.
    :param every: the longest an id waits for its write, seconds.
    """

    def __init__(self, ledger: Ledger, task: TaskRef, every: float = 1.0) -> None:
        self.ledger = ledger
        self.name = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        self.task = task
        self.every = every
        self._ids: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._last = float("-inf")  # the first id is written at once
        self._dirty = False

    def add(self, key: str, prediction_id: str, cost_cents: int | None) -> None:
        with self._lock:
            self._ids[key] = {"prediction_id": prediction_id, "cost_cents": cost_cents}
            self._dirty = True
            due = time.monotonic() - self._last >= self.every
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            doc = self.ledger.signer.signed(
                {"group": self.name, "task": self.task.model_dump(), "predictions": dict(self._ids)}
            )
            self._dirty = False
            self._last = time.monotonic()
            # Written under the lock: two flushes never race, and the last one holds every id.
            self.ledger.store.put(f"groups/{self.name}.json", json.dumps(doc).encode())
