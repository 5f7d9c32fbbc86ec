"""Only verified images count: what an upscale's output must be, checked against what was stored.

The facts come from the stream as it is stored (see :mod:`airflow_vibedream.files.storage`: the header and
the file's end, no second read); this module only compares them with what was asked, with no I/O:
the asked format, the target's long edge (2048 / 3840 / 7680 px), and the input's aspect ratio
within one pixel of rounding (the input's size is read from its header before the submit)."""

from __future__ import annotations

from dataclasses import dataclass

from airflow_vibedream.errors import InvalidOutputError

#: ``target_resolution`` -> the output's long edge in pixels (the API text: 2k, 4k, 8k).
LONG_EDGES = {"2k": 2048, "4k": 3840, "8k": 7680}
#: ``output_format`` -> the format's name as Pillow reads it from the header.
FORMAT_NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}

#: Names of the checks, as a stored file's ``checks`` lists them.
CHECK_COMPLETE = "complete"
CHECK_DECODES = "decodes"
CHECK_FORMAT = "format"
CHECK_LONG_EDGE = "long_edge"
CHECK_ASPECT = "aspect"


@dataclass(frozen=True)
class ImageFacts:
    """An image's header facts.

    :param width: pixels.
    :param height: pixels.
    :param format: Pillow's name (``PNG``, ``JPEG``, ``WEBP``, ``GIF``).
    """

    width: int
    height: int
    format: str


@dataclass(frozen=True)
class Expectation:
    """What an output must be; None where nothing is known (e.g. another model's outputs).

    :param format: Pillow's name of the asked format.
    :param long_edge: the asked long edge in pixels.
    :param input_size: (width, height) of the input, for the aspect ratio.
    """

    format: str | None = None
    long_edge: int | None = None
    input_size: tuple[int, int] | None = None

    @classmethod
    def for_upscale(
        cls, target_resolution: str | None, output_format: str | None, input_facts: ImageFacts | None
    ) -> Expectation:
        return cls(
            format=FORMAT_NAMES.get(output_format or ""),
            long_edge=LONG_EDGES.get(target_resolution or ""),
            input_size=(input_facts.width, input_facts.height) if input_facts else None,
        )

    def problems(self, facts: ImageFacts) -> list[str]:
        """What differs between ``facts`` and this expectation (empty: it is what was asked)."""
        found: list[str] = []
        if self.format and facts.format != self.format:
            found.append(f"format {facts.format}, asked {self.format}")
        if self.long_edge and max(facts.width, facts.height) != self.long_edge:
            found.append(f"long edge {max(facts.width, facts.height)} px, asked {self.long_edge} px")
        if self.long_edge and self.input_size and not found:
            expected = expected_size(self.input_size, self.long_edge)
            if abs(facts.width - expected[0]) > 1 or abs(facts.height - expected[1]) > 1:
                found.append(
                    f"{facts.width}x{facts.height} px does not keep the input's aspect ratio "
                    f"({self.input_size[0]}x{self.input_size[1]} -> {expected[0]}x{expected[1]})"
                )
        return found

    def checks(self) -> list[str]:
        """The checks this expectation makes beyond completeness and decoding."""
        names = [CHECK_FORMAT] if self.format else []
        if self.long_edge:
            names.append(CHECK_LONG_EDGE)
            if self.input_size:
                names.append(CHECK_ASPECT)
        return names

    def verify(self, facts: ImageFacts, where: str) -> list[str]:
        """The checks passed; :class:`InvalidOutputError` naming what differed otherwise."""
        problems = self.problems(facts)
        if problems:
            raise InvalidOutputError(
                f"The output stored as {where} is not what was asked: {'; '.join(problems)}",
                problems=problems,
            )
        return [CHECK_COMPLETE, CHECK_DECODES, *self.checks()]


def expected_size(input_size: tuple[int, int], long_edge: int) -> tuple[int, int]:
    """The output size that keeps ``input_size``'s aspect ratio at ``long_edge`` pixels."""
    width, height = input_size
    if width >= height:
        return long_edge, max(1, round(long_edge * height / width))
    return max(1, round(long_edge * width / height)), long_edge
