"""Fault injection for the emulator: the failures a real API and network produce, on demand.

A rule says which route it hits, what goes wrong, and how often. Rules come from the CLI
(``--fault '{"route": "poll", "kind": "status", "status": 503, "every": 3}'``) or from
``POST /_emulator/faults`` (``{"rules": [...]}``), so each test sets exactly the faults it needs.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

#: The vendor page's own example of a failed prediction's error text.
CONTENT_MODERATION_ERROR = "Your request was flagged by content moderation. Please modify your prompt."

Route = Literal["submit", "poll", "output", "any"]
Kind = Literal[
    "status",
    "drop",
    "slow",
    "garbage",
    "answer",
    "outage",
    "endless",
    "drip",
    "redirect",
    "fail_prediction",
    "stuck",
    "truncated",
    "wrong_size",
    "wrong_format",
    "wrong_aspect",
    "other_answer",
]
ROUTES: tuple[str, ...] = get_args(Route)
#: Kinds that serve a broken output file (route ``output``): a 200 whose image is not what was asked.
OUTPUT_KINDS: tuple[str, ...] = ("truncated", "wrong_size", "wrong_format", "wrong_aspect")
KINDS: tuple[str, ...] = get_args(Kind)
#: Kinds that replace the answer of the request they hit.
ANSWER_KINDS: tuple[str, ...] = (
    "status",
    "drop",
    "garbage",
    "answer",
    "outage",
    "endless",
    "drip",
    "redirect",
)


@dataclass
class FaultRule:
    """One kind of failure.

    :param route: ``submit``, ``poll``, ``output`` or ``any``.
    :param kind: ``status`` (answer ``status`` with a JSON error), ``drop`` (close the connection
        mid-answer), ``slow`` (answer after ``delay`` seconds), ``garbage`` (a 200 whose body is not
        JSON; with ``after_create`` on ``submit``, the job exists but its id is unreadable),
        ``answer`` (exactly ``status``, ``body`` and ``headers``: any hostile answer, such as
        deeply nested JSON, a ``NaN`` cost or a body that is not the gzip it claims),
        ``outage`` (every matching request answers ``status``, 503 by default, for ``seconds``
        from the moment the rule is set), ``endless`` (a 200 whose body never ends), ``drip``
        (a 200 whose body comes one byte every ``delay`` seconds), ``redirect`` (a 302 to
        ``location``), ``fail_prediction`` (the job ends ``failed`` with ``error``), ``stuck`` (the
        job never leaves ``processing``); on ``output`` only, a complete 200 whose image is wrong:
        ``truncated`` (the first half of the file), ``wrong_size`` (a 64 px image), ``wrong_format``
        (another format than asked, under the asked name), ``wrong_aspect`` (the right long edge,
        the short edge halved); on ``poll`` only, ``other_answer`` (a completed answer for another
        prediction: ``answer_id``, and ``answer_model`` as its ``modelId`` when set; what a confused
        API, a caching proxy or a redirect to another service sends).
    :param status: the HTTP status of a ``status`` fault.
    :param retry_after: seconds to send as a ``Retry-After`` header (and ``retry_after`` body field).
    :param after_create: on ``submit``, create the job first and fail afterwards: the client cannot
        know whether the job exists (the double-billing trap); with ``slow``, create the job and
        then hold its answer for ``delay`` seconds (a task killed meanwhile never reads its id).
    :param delay: seconds of a ``slow`` fault.
    :param after_bytes: for a ``drop`` on ``output``: send this many real bytes of the file first
        (an interrupted download, not an empty one).
    :param error: the error text of ``fail_prediction``.
    :param every: fire on every Nth matching request (1 = all), for deterministic fault rates.
    :param times: fire at most this many times (None = no limit).
    :param answer_id: the id an ``other_answer`` fault answers with.
    :param answer_model: the ``modelId`` an ``other_answer`` fault answers with (empty: the real one).
    """

    route: Route = "any"
    kind: Kind = "status"
    status: int = 503
    retry_after: float | None = None
    after_create: bool = False
    delay: float = 0.0
    after_bytes: int = 0
    error: str = CONTENT_MODERATION_ERROR
    every: int = 1
    times: int | None = None
    seconds: float = 0.0
    location: str = ""
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    answer_id: str = "00000000-0000-4000-8000-000000000000"
    answer_model: str = ""
    seen: int = field(default=0)
    fired: int = field(default=0)
    set_at: float = field(default_factory=time.monotonic)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultRule:
        known = {f.name for f in fields(cls)} - {"seen", "fired", "set_at"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        rule = cls(**data)
        if rule.route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}; got {rule.route!r}")
        if rule.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {rule.kind!r}")
        if rule.every < 1:
            raise ValueError("every must be >= 1")
        return rule

    def matches(self, route: str) -> bool:
        if self.kind == "outage" and time.monotonic() >= self.set_at + self.seconds:
            return False  # the outage is over
        return self.route in (route, "any") and (self.times is None or self.fired < self.times)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultInjector:
    """The active rules; the first rule that matches a request and is due fires."""

    def __init__(self, rules: list[FaultRule] | None = None) -> None:
        self.rules = list(rules or [])

    def replace(self, rules: list[dict[str, Any]]) -> None:
        self.rules = [FaultRule.from_dict(rule) for rule in rules]

    def pick(self, route: str, kinds: tuple[str, ...] = KINDS) -> FaultRule | None:
        for rule in self.rules:
            if rule.kind not in kinds or not rule.matches(route):
                continue
            rule.seen += 1
            if rule.seen % rule.every == 0:
                rule.fired += 1
                return rule
        return None


def parse_cli_rules(values: list[str]) -> list[FaultRule]:
    """``--fault`` values: one JSON object each."""
    return [FaultRule.from_dict(json.loads(value)) for value in values]


class DroppedResponse(Response):
    """Promise a body, send the headers and part of it, then close the connection: the client sees
    a dropped connection after its request was received (a read error, not a connect error).

    :param prefix: the bytes sent before the drop.
    :param total: the Content-Length promised.
    :param media_type: the Content-Type sent.
    """

    def __init__(
        self, prefix: bytes = b'{"id": ', total: int = 4096, media_type: str = "application/json"
    ) -> None:
        super().__init__(status_code=200)
        self.prefix = prefix
        self.total = max(total, len(prefix) + 1)
        self.content_type = media_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(self.total).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.prefix, "more_body": True})
        raise EmulatedConnectionDrop


class EmulatedConnectionDrop(Exception):
    """Raised after a partial answer; the server closes the connection (and the emulator's log
    filter keeps the traceback out of the output)."""


async def apply_delay(rule: FaultRule | None) -> None:
    if rule is not None and rule.kind == "slow" and rule.delay > 0:
        await asyncio.sleep(rule.delay)


class EndlessResponse(Response):
    """A 200 whose body never ends (``delay`` 0), or drips one byte every ``delay`` seconds: the
    downloads a client must bound by size and by time.

    :param delay: seconds between chunks (0: as fast as the client reads).
    :param media_type: the Content-Type sent.
    """

    def __init__(self, delay: float = 0.0, media_type: str = "image/png") -> None:
        super().__init__(status_code=200, media_type=media_type)
        self.delay = delay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"image/png")]}
        )
        chunk = b"\x00" if self.delay else b"\x00" * 65536
        gone = asyncio.Event()
        # The server keeps accepting sends after the client hung up: stop then, not after 64 GiB.
        watcher = asyncio.ensure_future(_until_disconnected(receive, gone))
        try:
            # Bounded like every loop of the emulator's: an hour of dripping, or 64 GiB of zeros, at most.
            for _ in range(3600 if self.delay else 1_048_576):
                if self.delay:
                    await asyncio.sleep(self.delay)
                else:
                    await asyncio.sleep(0)  # let the watcher hear a disconnect
                if gone.is_set():
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()


async def _until_disconnected(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()
