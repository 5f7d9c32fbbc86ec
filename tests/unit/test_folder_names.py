"""Folder names of ids, from the attacker's side: an id chosen to land in another DAG's, run's or
task's folder (``reports_`` beside ``reports``, ``a/b`` beside ``a:b``) gets a folder of its own, in
the outputs, the manifests and the ledger's neighbourhood (no I/O but ``tmp_path``)."""

from __future__ import annotations

import base64
import io
import itertools
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from airflow_vibedream.files.storage import DEFAULT_OUTPUT_NAME, MAX_KEPT_NAME, persist_outputs, safe_segment
from airflow_vibedream.jobs.ledger.documents import LEDGER_DIR
from airflow_vibedream.tasks.manifest import manifest_uri

#: What any name may hold: the characters kept as they are, and the hash mark.
NAME = re.compile(r"^[A-Za-z0-9=-][A-Za-z0-9._=~-]*$")
#: A changed name: readable text, "~", 20 hex digits of SHA-256.
CHANGED = re.compile(r"^[^~]*~[0-9a-f]{20}$")

#: Ids that one cleaning (unsafe runs to "_", edge "." and "_" dropped) gave one folder.
SAME_OLD_FOLDER = [
    [
        "reports",
        "reports_",
        "_reports",
        "reports.",
        ".reports",
        "..reports..",
        "reports/",
        "reports:",
        "reports ",
    ],
    ["a_b", "a/b", "a:b", "a b", "a//b", "a/:b", ".a_b", "a_b.", "_a_b_", "a\\b", "a\x00b", "a\u00e9b"],
    [
        "manual__2026-01-01T00_00_00_00_00",
        "manual__2026-01-01T00:00:00+00:00",
        "manual__2026-01-01T00:00:00.00:00",
    ],
    ["_", "", ".", "..", "../..", "/", "___", "é"],
]


@pytest.mark.parametrize("values", SAME_OLD_FOLDER, ids=lambda values: values[0] or "empty")
def test_ids_that_clean_alike_get_different_folders(values: list[str]) -> None:
    names = [safe_segment(value) for value in values]
    assert len(set(names)) == len(values), dict(zip(values, names, strict=True))


@pytest.mark.parametrize(
    "value",
    ["reports", "my_dag", "a_b", "a__b", "group.task", "k=v", "run-2026-01-01", "A.b-C=d_9", "x" * 250],
)
def test_a_clean_id_keeps_its_exact_name(value: str) -> None:
    assert safe_segment(value) == value


@pytest.mark.parametrize("value", ["reports_", "a/b", "a:b", ".a", "a.", "x" * 251, "a~b", "é"])
def test_a_changed_id_is_named_by_its_cleaned_text_and_a_hash(value: str) -> None:
    name = safe_segment(value)
    assert CHANGED.match(name) and NAME.match(name), name
    assert safe_segment(value) == name  # deterministic: a retry overwrites, it does not duplicate


def test_an_id_spelled_like_another_ids_folder_does_not_get_that_folder() -> None:
    # Team B names its DAG after team A's folder (a changed name, "~" and hash included).
    victim = safe_segment("reports_")
    assert safe_segment(victim) != victim
    assert safe_segment(victim.replace("~", "_")) != victim


@pytest.mark.parametrize(
    "value", [LEDGER_DIR, LEDGER_DIR.lstrip("_"), f"{LEDGER_DIR}_", f".{LEDGER_DIR}", f"{LEDGER_DIR}/"]
)
def test_no_id_gets_the_ledger_folder(value: str) -> None:
    # The ledger lives beside the DAGs' folders; names beginning with "_" are left to it.
    assert safe_segment(value) != LEDGER_DIR and not safe_segment(value).startswith("_")


def test_long_ids_that_differ_past_the_readable_part_get_different_folders() -> None:
    first, second = "x" * 300 + "1", "x" * 300 + "2"
    assert safe_segment(first) != safe_segment(second)
    assert len(safe_segment(first)) <= MAX_KEPT_NAME


def _generated_ids() -> list[str]:
    """Every string of up to 4 characters over an alphabet of what cleaning treats specially, then
    seeded random strings up to 300 characters (Unicode and lone surrogates included)."""
    alphabet = "ab_.-=/:~ \\\u00e9A"
    values = ["".join(chars) for size in range(5) for chars in itertools.product(alphabet, repeat=size)]
    rng = random.Random(20260101)
    wide = alphabet + "Z09+@%#?\x00\x7f\u0301\u4e2d\U0001f600\ud800"
    for _ in range(3000):
        size = rng.choice([rng.randint(1, 12), rng.randint(190, 300)])
        values.append("".join(rng.choice(wide) for _ in range(size)))
    return values


def test_the_mapping_is_injective_and_separator_free_over_many_generated_ids() -> None:
    values = _generated_ids()
    # An attacker may also name an id after any folder it has seen: feed every name back in.
    values = sorted(set(values) | {safe_segment(value) for value in values})
    names: dict[str, str] = {}
    for value in values:
        name = safe_segment(value)
        assert name not in names, f"{value!r} and {names[name]!r} both map to {name!r}"
        names[name] = value
        # One plain segment: no separator, never empty, ".", ".." or hidden, nothing beginning with "_".
        assert NAME.match(name) and not name.endswith("."), (value, name)
        assert len(name) <= MAX_KEPT_NAME, (value, name)
        # "~" marks exactly the names that are not the value itself.
        assert (name == value) != bool(CHANGED.match(name)), (value, name)
    assert len(names) > 30_000


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("reports", "r", "t"), ("reports_", "r", "t")),
        (("d", "a/b", "t"), ("d", "a_b", "t")),
        (("d", "a/b", "t"), ("d", "a:b", "t")),
        (("d", ".r.", "t"), ("d", "r", "t")),
        (("d", "r", "t."), ("d", "r", "t")),
    ],
)
def test_two_task_instances_never_share_a_manifest(
    first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    assert manifest_uri("/out", *first, None) != manifest_uri("/out", *second, None)


def _png(colour: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_dag_reports_underscore_does_not_overwrite_dag_reports_outputs(tmp_path: Path) -> None:
    stored = {}
    for dag_id, colour in (("reports", "red"), ("reports_", "blue")):
        names = {"dag_id": dag_id, "run_id": "manual__2026-01-01T00:00:00+00:00", "task_id": "t"}
        [output] = persist_outputs(
            [_png(colour)],
            str(tmp_path),
            names={**names, "map_index": -1, "prediction_id": "p"},
            name_template=DEFAULT_OUTPUT_NAME,
        )
        stored[dag_id] = output
    assert stored["reports"].uri != stored["reports_"].uri
    assert stored["reports"].uri.startswith(f"file://{tmp_path}/reports/")
    for dag_id, colour in (("reports", "red"), ("reports_", "blue")):
        with Image.open(stored[dag_id].uri.removeprefix("file://")) as image:
            assert image.convert("RGB").getpixel((0, 0)) == Image.new("RGB", (1, 1), colour).getpixel((0, 0))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [safe_segment("reports"), safe_segment("reports_")]
    )
