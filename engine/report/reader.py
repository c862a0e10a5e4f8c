"""Streamed reading of an events JSONL file: one line at a time, bounded memory, never fatal.

The file is read in 1 MiB chunks; each chunk's complete lines are decoded in one msgspec call
(``decode_lines``), so memory does not grow with the file and the per-line cost is msgspec's. A chunk that
holds a bad line is decoded again line by line, so one bad line costs only itself. ``transcript.partial``
lines (most of a log, and unused by the report) are recognised by their bytes and not decoded: the compact
encoder the engine uses writes ``"type":"transcript.partial"`` and that byte string cannot occur inside a
JSON string (its quotes would be escaped). A line longer than ``MAX_LINE_BYTES`` is skipped as malformed
without being held in memory whole.
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
CHUNK_BYTES = 1 << 20
_PARTIAL = b'"type":"transcript.partial"'


@dataclass(slots=True)
class ReadStats:
    """What the reader saw, for the report's header."""

    lines: int = 0
    events: int = 0  # decoded and used (partials excluded)
    partials: int = 0
    malformed: int = 0  # not JSON, cut off, or longer than MAX_LINE_BYTES
    not_events: int = 0  # JSON, but not an event this report knows (log lines, newer event types)


class EventReader:
    """Iterate the events of a JSONL stream; counts in ``stats``."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.stats = ReadStats()
        self._decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)

    def __iter__(self) -> Iterator[AnyEvent]:
        stats, read = self.stats, self.stream.read
        rest, skipping = b"", False  # rest: the unfinished last line; skipping: inside an overlong line
        while True:
            chunk = read(CHUNK_BYTES)
            if not chunk:
                break
            lines = (rest + chunk if rest else chunk).split(b"\n")
            rest = lines.pop()
            if skipping:
                if not lines:  # still no end to the overlong line
                    rest = b""
                    continue
                del lines[0]  # its tail
                skipping = False
            if len(rest) > MAX_LINE_BYTES:
                stats.lines += 1
                stats.malformed += 1
                rest, skipping = b"", True
            yield from self._batch(lines)
        if rest and not skipping:
            yield from self._batch([rest])

    def _batch(self, lines: list[bytes]) -> Iterator[AnyEvent]:
        """Decode a batch in one call; a batch holding a bad line is decoded line by line instead."""
        stats = self.stats
        stats.lines += len(lines)
        keep = [line for line in lines if _PARTIAL not in line]
        stats.partials += len(lines) - len(keep)
        try:
            events: list[AnyEvent] = self._decoder.decode_lines(b"\n".join(keep))
        except msgspec.DecodeError:
            events = self._one_by_one(keep)
        for event in events:
            if type(event) is TranscriptPartial:  # written by another encoder (spaces after the colon)
                stats.partials += 1
                continue
            stats.events += 1
            yield event

    def _one_by_one(self, lines: list[bytes]) -> list[AnyEvent]:
        decode, events = self._decoder.decode, []
        for line in lines:
            if not line.strip():
                continue
            try:
                events.append(decode(line))
            except msgspec.ValidationError:
                self.stats.not_events += 1
            except msgspec.DecodeError:
                self.stats.malformed += 1
        return events


def open_events(path: str) -> IO[bytes]:
    """A binary stream for ``path``: ``-`` is stdin, ``*.gz`` is decompressed on the fly."""
    if path == "-":
        return sys.stdin.buffer
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]  # a GzipFile is a binary stream
    return open(path, "rb", buffering=1 << 20)
