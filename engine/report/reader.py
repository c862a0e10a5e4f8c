"""Streamed reading of an events JSONL file: one line at a time, bounded memory, never fatal.

Each line is decoded on its own with one reusable msgspec decoder, so memory does not grow with the file
and one bad line costs only itself. ``transcript.partial`` lines (most of a log, and unused by the report)
are recognised by their bytes and not decoded: the compact encoder the engine uses writes
``"type":"transcript.partial"`` and that byte string cannot occur inside a JSON string (its quotes would be
escaped). A line longer than ``MAX_LINE_BYTES`` is skipped as malformed without being held in memory.
"""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import msgspec

from engine.report.schema import AnyEvent, TranscriptPartial

MAX_LINE_BYTES = 1 << 20
_PARTIAL = b'"type":"transcript.partial"'


@dataclass(slots=True)
class ReadStats:
    """What the reader saw, for the report's header."""

    lines: int = 0
    events: int = 0  # decoded and used (partials excluded)
    partials: int = 0
    malformed: int = 0  # not JSON, cut off, or longer than MAX_LINE_BYTES
    not_events: int = 0  # JSON, but not an event this report knows (log lines, newer event types)
    blank: int = 0


class EventReader:
    """Iterate the events of a JSONL stream; counts in ``stats``."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.stats = ReadStats()
        self._decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)

    def __iter__(self) -> Iterator[AnyEvent]:
        stats, decode, readline = self.stats, self._decoder.decode, self.stream.readline
        while True:
            line = readline(MAX_LINE_BYTES)
            if not line:
                return
            stats.lines += 1
            if len(line) >= MAX_LINE_BYTES and not line.endswith(b"\n"):
                self._skip_rest()
                stats.malformed += 1
                continue
            if _PARTIAL in line:
                stats.partials += 1  # counted, never decoded: the report does not use them
                continue
            if line[0] in b" \t\r\n" and not line.strip():
                stats.blank += 1
                continue
            try:
                event = decode(line)
            except msgspec.ValidationError:
                stats.not_events += 1
                continue
            except msgspec.DecodeError:
                stats.malformed += 1
                continue
            if isinstance(event, TranscriptPartial):  # written by another encoder (spaces after the colon)
                stats.partials += 1
                continue
            stats.events += 1
            yield event

    def _skip_rest(self) -> None:
        while True:
            chunk = self.stream.readline(MAX_LINE_BYTES)
            if not chunk or chunk.endswith(b"\n"):
                return


def open_events(path: str) -> IO[bytes]:
    """A binary stream for ``path``: ``-`` is stdin, ``*.gz`` is decompressed on the fly."""
    if path == "-":
        return sys.stdin.buffer
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]  # a GzipFile is a binary stream
    return open(path, "rb", buffering=1 << 20)
