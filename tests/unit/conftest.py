"""Unit tests do no I/O: the input check before a submit (a header read of the image) answers from
here unless a test asks for the real one (``@pytest.mark.real_input_probe``)."""

from __future__ import annotations

from collections.abc import Iterator
from unittest import mock

import pytest

#: What every input of a unit test is: a 640x480 PNG.
INPUT_FACTS = (640, 480, "PNG")


@pytest.fixture(autouse=True)
def input_probe(request: pytest.FixtureRequest) -> Iterator[mock.MagicMock | None]:
    if request.node.get_closest_marker("real_input_probe"):
        yield None
        return
    with mock.patch("airflow_vibedream.files.outputs.probe_input", return_value=INPUT_FACTS) as probe:
        yield probe


@pytest.fixture(autouse=True)
def no_ledger() -> Iterator[None]:
    """The ledger reads the input and writes beside the outputs: the integration tests drive it
    (tests/integration/test_ledger.py); its parts are unit-tested on their own."""
    from airflow_vibedream.operators.batch import VibeDreamBatchUpscaleOperator
    from airflow_vibedream.operators.vibedream import VibeDreamGenerateOperator

    with (
        mock.patch.object(VibeDreamGenerateOperator, "ledger_use", return_value=None),
        mock.patch.object(VibeDreamBatchUpscaleOperator, "ledger_use", return_value=None, create=True),
    ):
        yield
