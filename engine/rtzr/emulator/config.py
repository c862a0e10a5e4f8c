"""Emulator settings, fault kinds, and the ``--faults`` grammar.

Grammar (rules separated by ``;``, whitespace ignored)::

    SPEC  := RULE (";" RULE)*
    RULE  := [ "session=" WHICH ":" ] KIND [ "=" INT ]
    WHICH := N | N "-" M | "*"          (1-based WebSocket upgrade attempt numbers)
    KIND  := reject=STATUS | close_after=MS | error_after=MS | empty_text | stall[=MS]

Examples: ``session=3:close_after=500;session=5:reject=429``, ``session=2-4:stall``,
``session=*:empty_text``. A rule without ``session=`` applies to the next attempt (like
:meth:`Emulator.inject`). Every upgrade attempt counts, rejected ones included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

FaultKind = Literal["reject", "close_after", "error_after", "empty_text", "stall"]
FAULT_KINDS: tuple[str, ...] = ("reject", "close_after", "error_after", "empty_text", "stall")
DEFAULT_CLIENT_ID = "sori-emulator"
DEFAULT_CLIENT_SECRET = "sori-emulator-secret"
DEFAULT_PHRASEBOOK = Path(__file__).resolve().parent.parent.parent / "demo" / "phrases"


class FaultSpecError(ValueError):
    """A ``--faults`` rule does not follow the grammar; the message names the rule."""


class Fault(Struct, frozen=True, kw_only=True):
    """One injected misbehaviour for one session.

    reject: answer the upgrade with HTTP ``value`` (e.g. 429, 500); close_after: drop the TCP
    connection without a close frame ``value`` ms after the upgrade; error_after: send an in-band
    error object after ``value`` ms, then close 1011; empty_text: every result has empty text;
    stall: from ``value`` ms on, answer nothing (no results, no pongs, no close).
    """

    kind: FaultKind
    value: int = 0
    sessions: Annotated[int, Meta(ge=1)] = 1  # how many consecutive sessions it applies to (inject only)

    @staticmethod
    def reject(status: int) -> Fault:
        return Fault(kind="reject", value=status)

    @staticmethod
    def close_after(ms: int) -> Fault:
        return Fault(kind="close_after", value=ms)

    @staticmethod
    def error_after(ms: int) -> Fault:
        return Fault(kind="error_after", value=ms)

    @staticmethod
    def empty_text() -> Fault:
        return Fault(kind="empty_text")

    @staticmethod
    def stall(ms: int = 0) -> Fault:
        return Fault(kind="stall", value=ms)


class FaultRule(Struct, frozen=True, kw_only=True):
    """A fault bound to upgrade attempts ``first``..``last`` (None = open-ended; first None = next)."""

    fault: Fault
    first: int | None = None
    last: int | None = None

    def applies(self, attempt: int) -> bool:
        if self.first is None:
            return False
        return attempt >= self.first and (self.last is None or attempt <= self.last)


class EmulatorConfig(Struct, kw_only=True):
    """Everything the emulator can be told; times in ms unless the name says seconds."""

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 0
    handshake_ms: Annotated[int, Meta(ge=0)] = 100
    final_ms: Annotated[int, Meta(ge=0)] = 150
    interim_ms: Annotated[int, Meta(ge=1)] = 300
    max_sessions: Annotated[int, Meta(ge=0)] = 5
    token_lifetime_s: Annotated[float, Meta(gt=0)] = 21600.0
    idle_timeout_s: Annotated[float, Meta(gt=0)] = 60.0
    max_session_s: Annotated[float, Meta(gt=0)] = 3600.0
    epd_time: Annotated[float, Meta(gt=0, le=60)] = 0.8
    speech_dbfs: float = -45.0  # frame RMS above this is speech for EPD and placeholders
    phrasebook: str | None = None  # directory with *.wav + phrases.json; None = bundled demo phrases
    # Skip recognition (load tests): EPD, interims, Finalize/EOS and timestamps as usual, placeholder words
    # instead of phrasebook text (recognizer.SkipRecognizer); the phrasebook is not loaded.
    cheap: bool = False
    # The accepted credentials: both set, or both None to accept any non-empty pair (never just one).
    client_id: str | None = DEFAULT_CLIENT_ID
    client_secret: str | None = DEFAULT_CLIENT_SECRET
    faults: str = ""  # the --faults grammar above
    request_timeout_s: Annotated[float, Meta(gt=0)] = 10.0  # to receive an HTTP request head/body
    send_timeout_s: Annotated[float, Meta(gt=0)] = 10.0  # a client that stops reading is dropped
    max_message_bytes: Annotated[int, Meta(ge=1024)] = 1 << 20
    lag_probe_ms: Annotated[int, Meta(ge=0)] = 0  # > 0: sample the event loop's lag this often (GET /stats)
    # > 0 (load tests): input is read at most once per read_batch_ms, so one wake-up serves more sessions;
    # every message (Finalize included) may then be read up to that much later.
    read_batch_ms: Annotated[float, Meta(ge=0, le=50)] = 0.0
    # True (the one-process load rig only, bench/rig.py; no CLI flag): input is read only when the owner calls
    # Emulator.hub.drain(), e.g. after each of its ticks; nothing is read otherwise.
    read_driven: bool = False

    def __post_init__(self) -> None:
        if (self.client_id is None) != (self.client_secret is None):
            raise ValueError("client_id and client_secret: set both, or both None to accept any pair")
        if self.client_id == "" or self.client_secret == "":
            raise ValueError("client_id and client_secret: must not be empty (both None accepts any pair)")

    def phrasebook_dir(self) -> Path:
        return Path(self.phrasebook) if self.phrasebook else DEFAULT_PHRASEBOOK


def _parse_int(rule: str, text: str) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > 9:
        raise FaultSpecError(f"{rule!r}: {text!r} is not a non-negative integer")
    return int(text)


def parse_fault(rule: str, body: str) -> Fault:
    kind, sep, value = body.partition("=")
    kind = kind.strip()
    if kind not in FAULT_KINDS:
        raise FaultSpecError(f"{rule!r}: unknown fault {kind!r} (one of {', '.join(FAULT_KINDS)})")
    if kind == "empty_text":
        if sep:
            raise FaultSpecError(f"{rule!r}: empty_text takes no value")
        return Fault(kind="empty_text")
    if kind == "stall":
        return Fault(kind="stall", value=_parse_int(rule, value) if sep else 0)
    if not sep:
        raise FaultSpecError(f"{rule!r}: {kind} needs a value, e.g. {kind}=500")
    number = _parse_int(rule, value)
    if kind == "reject" and not 400 <= number <= 599:
        raise FaultSpecError(f"{rule!r}: reject status must be 400..599")
    return msgspec.convert({"kind": kind, "value": number}, Fault)


def parse_faults(spec: str) -> list[FaultRule]:
    """Parse a ``--faults`` spec; raises FaultSpecError naming the bad rule."""
    rules: list[FaultRule] = []
    for raw in spec.split(";"):
        rule = "".join(raw.split())
        if not rule:
            continue
        first: int | None = None
        last: int | None = None
        body = rule
        if rule.startswith("session="):
            which, colon, body = rule[len("session="):].partition(":")
            if not colon:
                raise FaultSpecError(f"{rule!r}: expected session=N:KIND")
            if which == "*":
                first = 1
            else:
                lo, dash, hi = which.partition("-")
                first = _parse_int(rule, lo)
                last = _parse_int(rule, hi) if dash else first
                if first < 1 or last < first:
                    raise FaultSpecError(f"{rule!r}: session numbers start at 1 and ranges go up")
        rules.append(FaultRule(fault=parse_fault(rule, body), first=first, last=last))
    return rules
