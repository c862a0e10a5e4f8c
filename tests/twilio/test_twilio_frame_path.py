"""The reader's per-message path (issue 13 round 6): a read of one whole text frame is parsed from its unmasked
bytes (``WsServerConnection.frame_nowait`` -> ``TwilioStream.receive_frame``), no ``str`` built, against the exact
head of the next on-time message; everything else still gets the full decode and its clear error, per call.
"""

from __future__ import annotations

import base64
import json

import pytest
import trio

from engine.media import AudioReceived
from engine.metrics import Histogram
from engine.twilio import protocol
from engine.twilio.protocol import TwilioStream
from engine.twilio.reactor import KEEP, PAUSE
from engine.twilio.server import IngestPass
from engine.ws.frames import encode_frame
from tests.twilio.test_twilio_frame_lag import _masked, _reader
from tests.twilio.test_twilio_protocol import SID, start


def layout(seq: int, chunk: int, ts: int, payload: bytes = b"\x01" * 160) -> str:
    """A media message exactly as Twilio writes it (compact, its key order)."""
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": SID,
                       "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(ts),
                                 "payload": base64.b64encode(payload).decode()}}, separators=(",", ":"))


class _Paths:
    """Counts what each path of ``proto`` saw (the exact head, the timestamp-ahead parse, the full decode)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, proto: TwilioStream) -> None:
        self.ahead = self.general = 0
        ahead, general = proto._frame_ahead, proto._receive_checked

        def count_ahead(raw: bytes) -> AudioReceived | None:
            self.ahead += 1
            return ahead(raw)

        def count_general(text: str | bytes, msg: protocol.InboundMessage | None) -> list[protocol.TwilioEvent]:
            self.general += 1
            return general(text, msg)

        monkeypatch.setattr(proto, "_frame_ahead", count_ahead)
        monkeypatch.setattr(proto, "_receive_checked", count_general)


async def test_on_time_frames_take_the_exact_head_and_ahead_ones_the_digit_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not vacuous: after the first frame (the general path sets the timeline's origin), every on-time layout frame
    is one startswith of the exact head; a timestamp ahead within the bound goes to the digit parse, and the
    stream is as the general path alone leaves it."""
    ingest = IngestPass(Histogram((10, 100)))
    reference = TwilioStream()
    reference.receive_text(start())
    with trio.fail_after(10):
        async with _reader(ingest) as (reader, proto):
            paths = _Paths(monkeypatch, proto)
            ts = 52
            for k in range(1, 301):
                ts += 20 if k > 1 else 0
                ahead = 20 if k % 50 == 0 else 0  # ahead by 20 ms (in step: within 40 ms), then on time again
                text = layout(k + 1, k, ts + ahead, bytes([k % 256]) * 160)
                ingest.begin()
                assert reader.readable(_masked(text), trio.current_time()) is KEEP
                ingest.end()
                reference._receive_checked(text, None)
            assert reader.handler.events == 300  # type: ignore[attr-defined]
            assert paths.general == 1 and paths.ahead == 6  # 6 = k 50, 100, ..., 300
            assert proto.stats == reference.stats and proto._timeline.pos == reference._timeline.pos
            assert proto._head == proto._exact_head() is not None


async def test_a_malformed_frame_still_gets_the_full_decode_and_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layout frame with a flaw the fixed layout cannot take (bad base64) is decoded in full and refused with the
    general path's error kind, counted per call; the stream goes on with the next frame on the fast path."""
    ingest = IngestPass(Histogram((10, 100)))
    with trio.fail_after(10):
        async with _reader(ingest) as (reader, proto):
            paths = _Paths(monkeypatch, proto)
            now = trio.current_time()
            assert reader.readable(_masked(layout(2, 1, 0)), now) is KEEP
            bad = layout(3, 2, 20).replace('"payload":"', '"payload":"=')
            assert reader.readable(_masked(bad), now) is KEEP
            assert reader.errors.count == 1 and proto.stats.errors == 1
            assert reader.errors.logged == {"base64"}
            assert paths.general == 2
            assert reader.readable(_masked(layout(3, 2, 20)), now) is KEEP
            assert paths.general == 2 and proto.stats.frames == 2


async def test_a_frame_that_is_not_utf8_goes_to_wsproto() -> None:
    """A whole frame whose bytes are not UTF-8 is not parsed (neither fast nor full): the read goes to the
    connection's general decoder, which hands it to wsproto (the call's task then closes with 1007)."""
    ingest = IngestPass(Histogram((10, 100)))
    with trio.fail_after(10):
        async with _reader(ingest) as (reader, proto):
            now = trio.current_time()
            text = layout(2, 1, 0).encode()
            bad = text[:40] + b"\xff" + text[41:]
            frame = encode_frame(0x1, bad, b"\x01\x02\x03\x04")
            assert reader.ws.frame_nowait(frame) == bad  # the frame's bytes, not decoded
            assert reader.readable(frame, now) is PAUSE
            assert proto.stats.messages == 1 and proto.stats.errors == 0 and not reader.ws.received  # start alone
