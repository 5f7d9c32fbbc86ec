"""The docs against the code: every ``[vibedream]`` option, connection extra, operator and trigger
parameter the README and docs/ name exists, with the default they say. A default changed in the code
and not in the docs (or the reverse) fails here."""

from __future__ import annotations

import ast
import inspect
import math
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_vibedream.get_provider_info import get_provider_info
from airflow_vibedream.hooks.vibedream import settings_from_connection
from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
from airflow_vibedream.operators.vibedream import VibeDreamGenerateOperator, VibeDreamUpscaleImageOperator
from airflow_vibedream.sensors.vibedream import VibeDreamPredictionSensor
from airflow_vibedream.triggers.vibedream import VibeDreamBatchTrigger, VibeDreamPredictionTrigger

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "airflow_vibedream"
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
CLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        VibeDreamGenerateOperator,
        VibeDreamUpscaleImageOperator,
        VibeDreamBatchUpscaleOperator,
        VibeDreamPredictionSensor,
        VibeDreamPredictionTrigger,
        VibeDreamBatchTrigger,
    )
}
OPTIONS: dict[str, dict[str, Any]] = get_provider_info()["config"]["vibedream"]["options"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


# -- reading the docs -------------------------------------------------------------------------------


def cells(line: str) -> list[str]:
    """The cells of one Markdown table row (a ``|`` inside a code span is text)."""
    found, current, in_code = [], "", False
    for char in line.strip().strip("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            found.append(current.strip())
            current = ""
        else:
            current += char
    return [*found, current.strip()]


def tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """(header, rows) of every table in ``text`` outside code fences (indented ones included)."""
    lines = [line.strip() for line in FENCE.sub("", text).splitlines()]
    block: list[str] = []
    for line in [*lines, ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if len(block) > 2:
            yield cells(block[0]), [cells(row) for row in block[2:]]
        block = []


def names_in(cell: str) -> list[str]:
    """The code-span names of a parameter cell: ``| `a`, `b` |`` or ``| `a` / `b` |``."""
    return re.findall(r"`([A-Za-z_][\w]*)`", cell)


def section_tables(text: str) -> Iterator[tuple[str, list[list[str]]]]:
    """(class name of the ``## `Class` `` section, rows) of each parameter table in docs/operators.md."""
    for section in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading = re.match(r"`(\w+)`", section)
        if heading is None:
            continue
        for header, rows in tables(section):
            if header[:2] == ["parameter", "default"]:
                yield heading[1], rows


def parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Every ``__init__`` parameter of ``cls`` and its bases (BaseOperator's ``task_id`` too)."""
    found: dict[str, inspect.Parameter] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):
            continue
        for name, parameter in signature.parameters.items():
            if name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                found[name] = parameter
    return found


def documented_default(text: str) -> Any:
    """A default as the docs write it: a literal in a code span, a duration, or a config option."""
    text = text.strip()
    if match := re.fullmatch(r"(\d+(?:\.\d+)?) (seconds|minutes|hours)", text):
        return timedelta(**{match[2]: float(match[1])})
    if match := re.fullmatch(r"`([^`]*)`", text):
        literal = match[1]
        if option := re.fullmatch(r"\[(\w+)\] (\w+)", literal):
            from airflow.providers.common.compat.sdk import conf

            return conf.getboolean(option[1], option[2], fallback=False)
        try:
            return ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            return literal  # a bare name, e.g. `vibedream_default`
    return ast.literal_eval(text)


def same_default(documented: Any, actual: Any) -> bool:
    if isinstance(actual, timedelta) or isinstance(documented, timedelta):
        documented_s, actual_s = (
            v.total_seconds() if isinstance(v, timedelta) else float(v) for v in (documented, actual)
        )
        return math.isclose(documented_s, actual_s)
    if isinstance(documented, bool) or isinstance(actual, bool):
        return documented is actual
    if isinstance(documented, int | float) and isinstance(actual, int | float):
        return math.isclose(documented, actual)
    return bool(documented == actual)


# -- operator and sensor parameters ------------------------------------------------------------------


def operator_rows() -> list[tuple[str, str, str]]:
    """(class, names cell, default cell) of every row of docs/operators.md's parameter tables."""
    text = (REPO / "docs" / "operators.md").read_text()
    return [(cls, row[0], row[1]) for cls, rows in section_tables(text) for row in rows]


def test_the_operator_docs_have_their_parameter_tables() -> None:
    documented = {cls for cls, _, _ in operator_rows()}
    assert documented == {
        "VibeDreamUpscaleImageOperator",
        "VibeDreamBatchUpscaleOperator",
        "VibeDreamPredictionSensor",
    }


@pytest.mark.parametrize(("cls_name", "names", "default"), operator_rows(), ids=lambda v: str(v)[:40])
def test_every_documented_parameter_exists_with_its_default(cls_name: str, names: str, default: str) -> None:
    accepted = parameters(CLASSES[cls_name])
    named = names_in(names)
    assert named, f"no parameter named in {names!r}"
    missing = [name for name in named if name not in accepted]
    assert not missing, f"{cls_name} has no parameter {missing} (documented in docs/operators.md)"
    if not default:
        return  # "as above": said in the row it points to
    if default in ("required", "one required"):
        for name in named:
            expected_empty = default == "required"
            has_none = accepted[name].default is None
            assert (accepted[name].default is inspect.Parameter.empty) == expected_empty or (
                default == "one required" and has_none
            ), f"{cls_name}.{name}: documented {default!r}, its default is {accepted[name].default!r}"
        return
    values = [documented_default(part) for part in re.split(r",\s*(?=`)", default)]
    if len(values) == 1:
        values = values * len(named)
    assert len(values) == len(named), f"{names!r}: {len(named)} names, {len(values)} defaults"
    for name, value in zip(named, values, strict=True):
        actual = accepted[name].default
        assert same_default(value, actual), f"{cls_name}.{name}: documented {value!r}, code {actual!r}"


def test_every_parameter_of_the_upscaler_and_the_sensor_is_documented() -> None:
    # The single-image operator and the sensor are documented row by row: a new parameter needs a row.
    rows = operator_rows()
    for cls_name, own in (
        ("VibeDreamUpscaleImageOperator", (VibeDreamUpscaleImageOperator, VibeDreamGenerateOperator)),
        ("VibeDreamPredictionSensor", (VibeDreamPredictionSensor,)),
    ):
        documented = {name for cls, names, _ in rows if cls == cls_name for name in names_in(names)}
        declared = {
            name
            for klass in own
            for name, p in inspect.signature(klass.__init__).parameters.items()
            if name != "self" and p.kind is p.KEYWORD_ONLY
        } - {"model_id", "input"}  # the generate operator's own: documented in its own section
        undocumented = sorted(declared - documented)
        assert not undocumented, f"{cls_name}: not in docs/operators.md: {undocumented}"


TRIGGER_CALL = re.compile(r"`(VibeDream\w+Trigger)\(([^`]*)\)`", re.DOTALL)


def test_the_trigger_signatures_in_the_docs_are_the_code() -> None:
    text = (REPO / "docs" / "operators.md").read_text()
    found = TRIGGER_CALL.findall(text)
    assert {name for name, _ in found} == {"VibeDreamPredictionTrigger", "VibeDreamBatchTrigger"}
    for name, arguments in found:
        signature = inspect.signature(CLASSES[name].__init__)
        actual = {k: p for k, p in signature.parameters.items() if k != "self"}
        call = ast.parse(f"f({' '.join(arguments.split())})", mode="eval").body
        assert isinstance(call, ast.Call)
        positional = [arg.id for arg in call.args if isinstance(arg, ast.Name)]
        documented = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        assert [*positional, *documented] == list(actual), f"{name}: docs list other parameters"
        for arg in positional:
            assert actual[arg].default is inspect.Parameter.empty, f"{name}.{arg} has a default"
        for arg, value in documented.items():
            assert same_default(value, actual[arg].default), f"{name}.{arg}: docs {value!r}"


def snippet_calls() -> Iterator[tuple[str, str, set[str]]]:
    for page in PAGES:
        for language, code in FENCE.findall(page.read_text()):
            if language != "python":
                continue
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CLASSES:
                    yield page.name, node.func.id, {kw.arg for kw in node.keywords if kw.arg}


def test_every_keyword_in_a_python_snippet_is_a_parameter() -> None:
    calls = list(snippet_calls())
    assert len(calls) >= 4  # the README's example of each operator at least
    for page, cls_name, keywords in calls:
        unknown = keywords - set(parameters(CLASSES[cls_name]))
        assert not unknown, f"{page}: {cls_name}({', '.join(sorted(unknown))}=...) is no parameter"


# -- [vibedream] options ---------------------------------------------------------------------------


def option_rows() -> dict[str, str]:
    """``{option: default cell}`` of the docs' table of ``[vibedream]`` settings."""
    text = (REPO / "docs" / "gallery.md").read_text()
    [rows] = [rows for header, rows in tables(text) if header[0].startswith("setting (`[vibedream]`")]
    return {names_in(row[0])[0]: row[1] for row in rows}


def option_value(option: str, text: str) -> Any:
    kind = OPTIONS[option]["type"]
    if kind == "integer":
        return int(text)
    if kind == "float":
        return float(text)
    return text


def test_every_vibedream_option_is_in_the_table_with_its_default() -> None:
    rows = option_rows()
    assert set(rows) == set(OPTIONS)
    for option, cell in rows.items():
        declared = OPTIONS[option]["default"]
        if cell.startswith("empty"):
            assert declared == "", f"{option}: documented empty, declared {declared!r}"
        else:
            said = cell.strip("`")
            assert option_value(option, said) == option_value(option, declared), (option, said, declared)


def test_every_vibedream_option_named_anywhere_exists() -> None:
    named = set()
    for page in PAGES:
        text = page.read_text()
        named |= set(re.findall(r"\[vibedream\]\s+`?([a-z_]+)", text))
        named |= {m.lower() for m in re.findall(r"AIRFLOW__VIBEDREAM__([A-Z_]+[A-Z])", text)}
    assert named, "the docs name no [vibedream] option"
    assert named <= set(OPTIONS), f"named in the docs, no such option: {sorted(named - set(OPTIONS))}"


def conf_reads() -> list[tuple[str, str, str, Any]]:
    """(file, method, option, fallback) of every ``conf.get*("vibedream", ...)`` in the package."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("get")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "vibedream"
            ):
                continue
            assert len(node.args) == 2 and isinstance(node.args[1], ast.Constant), (
                f"{path.name}:{node.lineno}: read a [vibedream] option by its literal name"
            )
            fallback = next((kw.value for kw in node.keywords if kw.arg == "fallback"), None)
            assert isinstance(fallback, ast.Constant), (
                f"{path.name}:{node.lineno}: give a literal fallback (the declared default)"
            )
            found.append((path.name, node.func.attr, node.args[1].value, fallback.value))
    return found


def test_the_code_reads_every_option_with_the_declared_default() -> None:
    reads = conf_reads()
    assert {option for _, _, option, _ in reads} == set(OPTIONS)
    for where, method, option, fallback in reads:
        declared = OPTIONS[option]["default"]
        convert = {"getint": int, "getfloat": float}.get(method, str)
        assert convert(fallback) == convert(declared), f"{where}: {option} falls back to {fallback!r}"


def test_the_thumbnail_cache_default_is_the_documented_one() -> None:
    from airflow_vibedream.plugins.app import default_cache_dir

    assert option_rows()["gallery_cache_dir"] == "empty: `$AIRFLOW_HOME/vibedream-thumbnails`"
    assert default_cache_dir().name == "vibedream-thumbnails"


# -- connection extras -----------------------------------------------------------------------------


def extra_rows() -> dict[str, str]:
    """``{extra: default cell}`` of the README's table of connection extras."""
    [rows] = [rows for header, rows in tables(README.read_text()) if header[:2] == ["extra", "default"]]
    return {names_in(row[0])[0]: row[1] for row in rows}


def extras_read() -> set[str]:
    """The extras ``settings_from_connection`` reads (``_extra_number`` / ``_extra_bool`` calls)."""
    source = inspect.getsource(settings_from_connection)
    return set(re.findall(r"_extra_(?:number|bool)\(\s*extra,\s*\"(\w+)\"", source))


def setting_of(name: str, extra: dict[str, Any]) -> Any:
    settings = settings_from_connection("c", host=None, port=None, password="k", extra=extra)
    return getattr(settings.retry, name) if hasattr(settings.retry, name) else getattr(settings, name)


def extra_default(text: str) -> Any:
    if match := re.fullmatch(r"(\d+) MiB", text):
        return int(match[1]) * 1024 * 1024
    if text in ("false", "true"):
        return text == "true"
    return float(text)


def test_every_connection_extra_is_in_the_readme_with_its_default() -> None:
    rows = extra_rows()
    assert set(rows) == extras_read()
    for name, cell in rows.items():
        documented, actual = extra_default(cell), setting_of(name, {})
        assert same_default(documented, actual), f"extra {name}: README says {cell}, the code {actual!r}"
        # And the name is really read: another value changes the setting.
        other = (not actual) if isinstance(actual, bool) else type(actual)(actual * 2 + 1)
        assert setting_of(name, {name: other}) == other, f"extra {name} is not read"


def test_the_connection_forms_defaults_are_the_code() -> None:
    [connection] = get_provider_info()["connection-types"]
    for name, field in connection["conn-fields"].items():
        assert name in extras_read()
        if said := re.search(r"Default (\S+?)\.?$", field["description"]):
            assert same_default(extra_default(said[1]), setting_of(name, {})), (name, said[1])
