"""Parameter checks shared by every operator and the sensor: the same rule at parse time (plain
values) and right after rendering (templated values), each error naming its field."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from airflow_vibedream.client.request import validate_choice
from airflow_vibedream.errors import VibeDreamValidationError


def is_templated(value: Any) -> bool:
    """Values rendered later (Jinja strings, XComArgs) are checked after rendering instead."""
    return not isinstance(value, (str, bool, int, float, Mapping, list, timedelta, type(None))) or (
        isinstance(value, str) and "{{" in value
    )


def positive_seconds(value: Any, field_name: str) -> float:
    """A finite number of seconds > 0 (or a timedelta)."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise VibeDreamValidationError(
            f"{field_name} must be a finite, positive number of seconds; got {value!r}", field=field_name
        )
    return float(seconds)


def positive_whole(value: Any, field_name: str) -> int:
    """A whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VibeDreamValidationError(
            f"{field_name} must be a whole number >= 1; got {value!r}", field=field_name
        )
    return value


def non_negative(value: Any, field_name: str, *, allow_none: bool = False) -> float | None:
    """A finite number >= 0 (None allowed when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise VibeDreamValidationError(
            f"{field_name} must be a finite number >= 0{' or None' if allow_none else ''}; got {value!r}",
            field=field_name,
        )
    return float(value)


def choice(field_name: str, value: Any, allowed: Iterable[str], *, unless_templated: bool = False) -> Any:
    """One of ``allowed``; a templated value passes when ``unless_templated`` (checked after rendering)."""
    if unless_templated and is_templated(value):
        return value
    return validate_choice(field_name, value, allowed)
