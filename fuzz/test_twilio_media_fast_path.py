"""Differential: the per-message fast paths against the general code they bypass.

* ``TwilioStream._on_media`` (the in-step media message, checked at once) against
  ``TwilioStream._on_media_checked`` (every check in order, as before the fast path): for any sequence of
  messages — in step, gaps, duplicates, late frames, timestamp jumps, the other track, another streamSid,
  missing or malformed digit strings, media before ``start`` or after ``stop`` — both accept and reject
  exactly the same messages, with the same events, errors (kind, message, fatal), stats and state.
* ``TextFrameDecoder.feed`` on a read holding exactly one frame (its fast path) against the same bytes fed
  in two reads (the general loop).
* ``apply_mask`` against the RFC's byte-by-byte XOR, both sides of its small-frame limit.

Bounded (the ``sori`` profile in conftest.py) in ``make test``; ``make fuzz`` runs it long.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from engine.twilio.protocol import TwilioEvent, TwilioProtocolError, TwilioStream
from engine.ws.frames import _REPUNIT_MAX_WORDS, TextFrameDecoder, apply_mask, encode_frame

SID = "MZ" + "0" * 32
OTHER_SID = "MZ" + "1" * 32


class _GeneralOnly(TwilioStream):
    """The reference: every media message through the general path."""

    def _on_media(self, msg: Any) -> list[TwilioEvent]:
        return self._on_media_checked(msg)


def _outcome(stream: TwilioStream, text: str) -> tuple[str, object]:
    try:
        return "events", stream.receive_text(text)
    except TwilioProtocolError as exc:
        return "error", (exc.kind, str(exc), exc.fatal)


def _snapshot(stream: TwilioStream) -> tuple[object, ...]:
    tl = stream._timeline
    return (stream.stats, stream.state, stream.started, stream._highest_seq, stream._seen, tl.first_ts,
            tl.next_chunk, tl.pos, sorted(tl.missing))


# Digit strings as Twilio sends them, and what a broken or hostile peer might send instead: each of these
# spells ``n`` to Python's int() (or nearly), and each is refused by the general path.
_NOT_ASCII_DIGITS = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
_MISSPELLED = (lambda n: f" {n}", lambda n: f"{n} ", lambda n: f"+{n}", lambda n: f"-{n}", lambda n: f"{n}.0",
               lambda n: str(n).translate(_NOT_ASCII_DIGITS), lambda n: str(n).rjust(16, "0"),
               lambda n: f"{n}_0", lambda n: "", lambda n: "²", lambda n: "abc", lambda n: "0x1")


_FLAWS = ["none"] * 8 + [
    "seq_ahead", "seq_behind", "seq_same", "seq_missing", "seq_number", "seq_misspelled",
    "chunk_ahead", "chunk_behind", "chunk_same", "chunk_number", "chunk_misspelled",
    "ts_late", "ts_behind", "ts_misspelled", "other_sid", "other_track", "payload_size",
]


def _value(draw: st.DrawFn, flaw: str, field: str, expected: int) -> object:
    """A numeric string field: ``expected`` unless ``flaw`` is about this field."""
    if not flaw.startswith(field + "_"):
        return str(expected)
    how = flaw.removeprefix(field + "_")
    if how == "ahead":
        return str(expected + draw(st.integers(1, 300)))
    if how == "behind":
        return str(max(0, expected - draw(st.integers(1, 300))))
    if how == "same":
        return str(max(0, expected - 1))
    if how == "late":
        return str(expected + draw(st.sampled_from([1, 20, 39, 40, 41, 400, 5000])))
    if how == "number":
        return expected  # a JSON number: a schema error for msgspec
    return draw(st.sampled_from(_MISSPELLED))(expected)


@st.composite
def _message(draw: st.DrawFn, seq: int, chunk: int, ts: int) -> str:
    """The next message: mostly in-step media, each with at most one flaw, now and then another event."""
    kind = draw(st.sampled_from(["media"] * 40 + ["connected", "start", "dtmf", "mark", "stop", "junk"]))
    if kind == "junk":
        return draw(st.sampled_from(["", "{", "[]", '{"event":"media"}', '{"event":"other","x":1}']))
    flaw = draw(st.sampled_from(_FLAWS))
    msg: dict[str, Any] = {"event": kind, "streamSid": OTHER_SID if flaw == "other_sid" else SID}
    if flaw != "seq_missing":
        msg["sequenceNumber"] = _value(draw, flaw, "seq", seq)
    if kind == "connected":
        msg = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    elif kind == "start":
        msg["start"] = {"streamSid": SID, "callSid": "CA1", "tracks": ["inbound"]}
    elif kind == "dtmf":
        msg["dtmf"] = {"digit": "5"}
    elif kind == "mark":
        msg["mark"] = {"name": "m"}
    elif kind == "media":
        size = draw(st.sampled_from([0, 1, 7, 8, 320])) if flaw == "payload_size" else 160
        msg["media"] = {"track": "outbound" if flaw == "other_track" else "inbound",
                        "chunk": _value(draw, flaw, "chunk", chunk), "timestamp": _value(draw, flaw, "ts", ts),
                        "payload": _b64(bytes(range(size % 256)) + bytes(max(0, size - 256)))}
    return json.dumps(msg)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


@given(st.data(), st.integers(20, 2000))
def test_media_fast_path_equals_the_general_path(data: st.DataObject, max_gap_ms: int) -> None:
    fast = TwilioStream(track="inbound", max_gap_ms=max_gap_ms)
    general = _GeneralOnly(track="inbound", max_gap_ms=max_gap_ms)
    prelude = data.draw(st.sampled_from([[], ["connected"], ["connected", "start"], ["connected", "start"], ["start"]]))
    for kind in prelude:
        text = (json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}) if kind == "connected" else
                json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID,
                            "start": {"streamSid": SID, "callSid": "CA1", "tracks": ["inbound"]}}))
        assert _outcome(fast, text) == _outcome(general, text)
    seq, chunk, ts = 2, 1, data.draw(st.integers(0, 10**6))
    for _ in range(data.draw(st.integers(1, 40))):
        text = data.draw(_message(seq, chunk, ts))
        got, want = _outcome(fast, text), _outcome(general, text)
        assert got == want, text
        assert _snapshot(fast) == _snapshot(general), text
        # The model's next numbers follow the stream (what an in-step next message would carry).
        seq = general._highest_seq + 1
        chunk = max(general._timeline.next_chunk, 1)
        first = general._timeline.first_ts
        ts = ts if first is None else first + general._timeline.pos // 8


def test_in_step_media_takes_the_fast_path() -> None:
    """Not vacuous: in-step media never reaches the general path (which this stream refuses)."""

    class _FastOnly(TwilioStream):
        general = 0

        def _on_media_checked(self, msg: Any) -> list[TwilioEvent]:
            type(self).general += 1
            return super()._on_media_checked(msg)

    stream, general = _FastOnly(), _GeneralOnly()
    start = json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {"streamSid": SID}})
    stream.receive_text(start)
    general.receive_text(start)
    for k in range(1, 601):  # past the 256-message sequence window
        text = json.dumps({"event": "media", "sequenceNumber": str(k + 1), "streamSid": SID,
                           "media": {"track": "inbound", "chunk": str(k), "timestamp": str(k * 20),
                                     "payload": _b64(bytes([k % 256]) * 160)}})
        assert stream.receive_text(text) == general.receive_text(text)
    assert _FastOnly.general == 1  # the first frame (it sets the timeline's origin)
    assert stream.stats.frames == 600 and stream._timeline.pos == 600 * 160
    assert _snapshot(stream) == _snapshot(general)


@given(st.one_of(st.binary(max_size=125), st.binary(min_size=126, max_size=700)), st.binary(min_size=4, max_size=4),
       st.integers(0, 4),
       st.sampled_from([0, 125, 126, 127, 300, 65535]), st.binary(max_size=12))
def test_one_frame_read_equals_the_general_loop(payload: bytes, mask: bytes, damage: int, limit_pick: int,
                                                tail: bytes) -> None:
    text = payload.decode("utf-8", "replace").encode()
    frame = bytearray(encode_frame(0x1, text if damage != 1 else payload, mask))
    if damage == 2 and len(frame) > 4:
        frame[len(frame) // 2] ^= 0xFF  # may break the UTF-8 or nothing at all
    if damage == 3:
        frame = frame[:-1]  # one byte short: incomplete
    if damage == 4:  # a 16-bit length that 7 bits could hold: not minimal, a protocol error (wsproto's)
        short = text[:125]
        frame = bytearray(bytes((0x81, 0x80 | 126)) + len(short).to_bytes(2, "big") + mask + apply_mask(short, mask))
    data = bytes(frame) + tail  # the frame alone, or followed by part of the next one
    limit = limit_pick or 64 * 1024
    one = TextFrameDecoder(limit)
    two = TextFrameDecoder(limit)
    got = one.feed(data)
    first, rest = two.feed(data[:1])
    assert first == [] and rest is None
    assert got == two.feed(data[1:])
    assert one._buffer == two._buffer


@given(st.binary(max_size=(_REPUNIT_MAX_WORDS + 8) * 4), st.binary(min_size=4, max_size=4))
def test_apply_mask_is_the_rfc_xor(data: bytes, mask: bytes) -> None:
    assert apply_mask(data, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
