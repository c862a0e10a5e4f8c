"""Differential: the per-message fast paths against the general code they bypass.

* ``TwilioStream.receive_text``'s fast path (the in-step media message, decoded once and checked at once)
  against ``TwilioStream._receive_checked`` (every check in order, as before the fast path): for any
  sequence of messages — in step, gaps, duplicates, late frames, timestamp jumps, the other track, another
  streamSid, missing or malformed digit strings, empty or oversized payloads, unknown fields, a binary
  frame, media before ``start`` or after ``stop`` — both accept and reject exactly the same messages, with
  the same events, errors (kind, message, fatal), stats and state.
* The fixed-layout parse (``receive_one`` on Twilio's exact compact text) against the full msgspec decode
  (``_GeneralOnly``): in-step messages in Twilio's layout with random character mutations (replaced, deleted,
  inserted: quotes, backslashes and escapes, digits, braces, base64 padding, spaces, non-ASCII) give the same
  events or the same error, stats and state; and in-step layout messages never reach msgspec's full decode.
* The server's per-message path (``receive_frame`` on the frame's UTF-8 bytes, else ``receive_full`` on its
  text; round 6) against the same references, in both tests above, and the exact head ``_in_step`` builds for
  the next message against the one the stream's state gives; on-time messages with broken ends and streams
  whose in-step bound is zero or negative (``test_the_exact_head_takes_what_the_full_decode_takes``).
* ``TextFrameDecoder.one`` (a read holding exactly one frame) against the same bytes fed to the general
  loop (``feed``) in two reads; and ``one`` takes every frame of the shape it is for (not vacuous); ``raw`` is
  ``one`` before its UTF-8 decode.
* ``apply_mask`` against the RFC's byte-by-byte XOR, both sides of its small-frame limit.

Bounded (the ``sori`` profile in conftest.py) in ``make test``; ``make fuzz`` runs it long.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from engine.media import AudioReceived
from engine.twilio.protocol import InboundMessage, TwilioEvent, TwilioProtocolError, TwilioStream
from engine.ws.frames import _REPUNIT_MAX_WORDS, TextFrameDecoder, apply_mask, apply_mask_py, c_unmask, encode_frame
from fuzz.test_twilio_wsconn_fuzz import cut

SID = "MZ" + "0" * 32
OTHER_SID = "MZ" + "1" * 32


class _GeneralOnly(TwilioStream):
    """The reference: every message through the general path."""

    def receive_text(self, text: str | bytes) -> list[TwilioEvent]:
        return self._receive_checked(text, None)


def _outcome(stream: TwilioStream, text: str | bytes) -> tuple[str, object]:
    try:
        return "events", stream.receive_text(text)
    except TwilioProtocolError as exc:
        return "error", (exc.kind, str(exc), exc.fatal)


def _outcome_one(stream: TwilioStream, text: str | bytes) -> tuple[str, object]:
    """``receive_one`` (the server's per-message call) as a list: a lone event is the fast path's real frame."""
    try:
        got = stream.receive_one(text)
    except TwilioProtocolError as exc:
        return "error", (exc.kind, str(exc), exc.fatal)
    if isinstance(got, AudioReceived):
        assert not got.filled
        return "events", [got]
    return "events", got


def _outcome_frame(stream: TwilioStream, text: str | bytes) -> tuple[str, object]:
    """The server's per-message path: ``receive_frame`` on the frame's UTF-8 bytes, else ``receive_full`` on the
    text (a binary frame straight to ``receive_full``, as the reader's queue hands it); and the exact head the
    stream keeps is the one its state gives (``_in_step`` builds it incrementally)."""
    try:
        got = stream.receive_frame(text.encode()) if isinstance(text, str) else None
        if got is None:
            got = stream.receive_full(text)
    except TwilioProtocolError as exc:
        return "error", (exc.kind, str(exc), exc.fatal)
    finally:
        assert stream._head == stream._exact_head()
    if isinstance(got, AudioReceived):
        assert not got.filled
        return "events", [got]
    return "events", got


def _snapshot(stream: TwilioStream) -> tuple[object, ...]:
    tl = stream._timeline
    return (stream.stats, stream.state, stream.started, stream.stop, stream._highest_seq, stream._gaps, tl.first_ts,
            tl.next_chunk, tl.pos, sorted(tl.missing or ()), stream._checked_kinds)


# Digit strings as Twilio sends them, and what a broken or hostile peer might send instead: each of these
# spells ``n`` to Python's int() (or nearly), and each is refused by the general path.
_NOT_ASCII_DIGITS = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
_MISSPELLED = (lambda n: f" {n}", lambda n: f"{n} ", lambda n: f"+{n}", lambda n: f"-{n}", lambda n: f"{n}.0",
               lambda n: str(n).translate(_NOT_ASCII_DIGITS), lambda n: str(n).rjust(16, "0"),
               lambda n: f"{n}_0", lambda n: "", lambda n: "²", lambda n: "abc", lambda n: "0x1")


_FLAWS = ["none"] * 8 + [
    "seq_ahead", "seq_behind", "seq_same", "seq_missing", "seq_number", "seq_misspelled",
    "chunk_ahead", "chunk_behind", "chunk_same", "chunk_number", "chunk_misspelled",
    "ts_late", "ts_behind", "ts_misspelled", "other_sid", "other_track", "payload_size", "unknown_field", "binary",
    "seq_long", "chunk_long", "ts_long",
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
    if how == "long":
        return str(expected).rjust(16, "0")  # the right number in 16 digits: more than a digit string may have
    if how == "number":
        return expected  # a JSON number: a schema error for msgspec
    return draw(st.sampled_from(_MISSPELLED))(expected)


@st.composite
def _message(draw: st.DrawFn, seq: int, chunk: int, ts: int) -> str | bytes:
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
    if flaw == "unknown_field":
        msg[draw(st.sampled_from(["media", "extra"]))] = msg.get("media", {}) | {"newField": 1}
    if flaw == "binary":
        return json.dumps(msg).encode()  # a binary frame, which Twilio never sends
    return json.dumps(msg)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


@given(st.data(), st.one_of(st.sampled_from([20, 25, 39, 40, 41, 0, -5]), st.integers(20, 2000)),
       st.sampled_from([64 * 1024, 450]))
def test_media_fast_path_equals_the_general_path(data: st.DataObject, max_gap_ms: int, max_bytes: int) -> None:
    # max_bytes 450: a media message of 320 bytes of audio is oversized, one of 160 is not.
    fast = TwilioStream(max_bytes, track="inbound", max_gap_ms=max_gap_ms)
    general = _GeneralOnly(max_bytes, track="inbound", max_gap_ms=max_gap_ms)
    one = TwilioStream(max_bytes, track="inbound", max_gap_ms=max_gap_ms)  # the same through receive_one
    frame = TwilioStream(max_bytes, track="inbound", max_gap_ms=max_gap_ms)  # receive_frame, else receive_full
    prelude = data.draw(st.sampled_from([[], ["connected"], ["connected", "start"], ["connected", "start"], ["start"]]))
    for kind in prelude:
        text = (json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}) if kind == "connected" else
                json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID,
                            "start": {"streamSid": SID, "callSid": "CA1", "tracks": ["inbound"]}}))
        assert _outcome(fast, text) == _outcome(general, text) == _outcome_one(one, text) == _outcome_frame(frame, text)
    seq, chunk, ts = 2, 1, data.draw(st.integers(0, 10**6))
    for _ in range(data.draw(st.integers(1, 40))):
        text = data.draw(_message(seq, chunk, ts))
        got, want = _outcome(fast, text), _outcome(general, text)
        assert got == want, text
        assert _outcome_one(one, text) == want, text
        assert _outcome_frame(frame, text) == want, text
        assert _snapshot(fast) == _snapshot(general) == _snapshot(one) == _snapshot(frame), text
        if got[0] == "events":  # one object per event: the neutral ones themselves
            assert all(type(a) is type(b) for a, b in zip(got[1], want[1], strict=True))  # type: ignore[call-overload]
        # The model's next numbers follow the stream (what an in-step next message would carry).
        seq = general._highest_seq + 1
        chunk = max(general._timeline.next_chunk, 1)
        first = general._timeline.first_ts
        ts = ts if first is None else first + general._timeline.pos // 8


@pytest.mark.parametrize("max_gap_ms", [10_000, 30])
def test_in_step_media_takes_the_fast_path(max_gap_ms: int) -> None:
    """Not vacuous: in-step media never reaches the general path (which this stream counts), up to a timestamp
    exactly at the in-step bound (40 ms ahead, or max_gap_ms when that is less) on every other frame."""

    class _FastOnly(TwilioStream):
        general = 0

        def _receive_checked(self, text: str | bytes, msg: InboundMessage | None) -> list[TwilioEvent]:
            type(self).general += 1
            return super()._receive_checked(text, msg)

    stream, general = _FastOnly(max_gap_ms=max_gap_ms), _GeneralOnly(max_gap_ms=max_gap_ms)
    start = json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {"streamSid": SID}})
    stream.receive_text(start)
    general.receive_text(start)
    ahead = min(40, max_gap_ms)
    for k in range(1, 601):  # past the 256-message sequence window
        ts = k * 20 + (ahead if k % 2 == 0 else 0)
        text = json.dumps({"event": "media", "sequenceNumber": str(k + 1), "streamSid": SID,
                           "media": {"track": "inbound", "chunk": str(k), "timestamp": str(ts),
                                     "payload": _b64(bytes([k % 256]) * 160)}})
        assert stream.receive_text(text) == general.receive_text(text)
    assert _FastOnly.general == 2  # start, and the first frame (it sets the timeline's origin)
    assert stream.stats.frames == 600 and stream._timeline.pos == 600 * 160
    assert stream.stats.timestamp_jumps == stream.stats.filled_frames == stream.stats.resyncs == 0
    assert _snapshot(stream) == _snapshot(general)


@pytest.mark.parametrize("layout", [False, True])  # json.dumps's spacing (msgspec's fast path), or Twilio's text
@pytest.mark.parametrize("field", ["seq", "chunk"])
def test_the_fast_path_keeps_the_digit_limit(field: str, layout: bool) -> None:
    """The fast path compares the next sequence number and chunk as strings (str(n)); at the limit of 15 digits the
    next one has 16, which the general path refuses: so does the fast path, whatever the expected number is."""
    top = 10**15 - 1

    class _Counted(TwilioStream):
        general = 0

        def _receive_checked(self, text: str | bytes, msg: InboundMessage | None) -> list[TwilioEvent]:
            self.general += 1
            return super()._receive_checked(text, msg)

    streams = [_Counted(), _GeneralOnly()]
    seq0 = top - 2 if field == "seq" else 1
    chunk0 = top if field == "chunk" else 1
    start = json.dumps({"event": "start", "sequenceNumber": str(seq0), "streamSid": SID, "start": {"streamSid": SID}})

    def media(seq: int, chunk: int, ts: int) -> str:
        if layout:
            return _layout(seq, SID, "inbound", chunk, ts, bytes(160))
        return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": SID,
                           "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(ts),
                                     "payload": _b64(bytes(160))}})

    texts = [start, media(seq0 + 1, chunk0 - 1, 0), media(seq0 + 2, chunk0, 20), media(seq0 + 3, chunk0 + 1, 40)]
    outcomes = [[_outcome_one(stream, text) for text in texts] for stream in streams]
    assert outcomes[0] == outcomes[1]
    assert streams[0].general == 3  # start, the first frame, the 16-digit one: the 15-digit one took the fast path
    assert outcomes[0][3][0] == "error" and outcomes[0][2][0] == "events"  # 16 digits: refused; 15: taken
    assert _snapshot(streams[0]) == _snapshot(streams[1])


def _layout(seq: int, sid: str, track: str, chunk: int, ts: int | str, payload: bytes) -> str:
    """A media message exactly as Twilio writes it: compact, keys in its documented order."""
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": sid,
                       "media": {"track": track, "chunk": str(chunk), "timestamp": str(ts), "payload": _b64(payload)}},
                      separators=(",", ":"), ensure_ascii=False)


# What a mutation writes: JSON's and base64's own characters, escapes, digits, and a few that are neither.
_MUTANTS = st.sampled_from(['"', "\\", "\\u0041", "\\/", "\\n", "/", "+", "=", "==", "}", "{", ",", ":", " ", "0", "1",
                            "9", "A", "z", "é", "٣", "\x00", "]", "media", '"}}', '","payload":"'])


@st.composite
def _mutated(draw: st.DrawFn, text: str) -> str:
    """``text`` with one to three characters replaced, deleted or inserted, mostly where the fixed layout's
    checks sit: the end (the payload's last characters, its closing quote, the braces), the timestamp and the
    payload key, the payload's first characters; anywhere now and then."""
    chars = list(text)
    key = text.rfind('","payload":"')
    regions = [(0, len(text) - 1), (len(text) - 6, len(text) - 1), (key - 8, key + 16)]
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        low, high = draw(st.sampled_from(regions))
        where = min(draw(st.integers(max(0, low), max(0, high))), max(0, len(chars) - 1))
        how = draw(st.sampled_from(["replace", "delete", "insert"]))
        if how == "delete" and chars:
            del chars[where]
        elif how == "insert":
            chars.insert(where, draw(_MUTANTS))
        elif chars:
            chars[where] = draw(_MUTANTS)
    return "".join(chars)


@given(st.data(), st.sampled_from([64 * 1024, 400]), st.sampled_from([SID, 'MZ"q\\é' + "0" * 28]),
       st.sampled_from(["inbound", "in\"b"]))
def test_fixed_layout_parse_equals_the_full_decode(data: st.DataObject, max_bytes: int, sid: str, track: str) -> None:
    """Mutated media messages in Twilio's layout: the stream with its fast paths (``receive_one``,
    ``receive_text``) and the general path alone agree on each, event for event or error for error, and in
    state; an unmutated in-step message between them keeps the stream armed. A streamSid or track that JSON
    must escape is matched as JSON spells it."""
    one, text_path = TwilioStream(max_bytes, track=track), TwilioStream(max_bytes, track=track)
    frame = TwilioStream(max_bytes, track=track)
    general = _GeneralOnly(max_bytes, track=track)
    start = json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {"streamSid": sid}})
    streams = (one, text_path, general, frame)
    for stream in streams:
        stream.receive_text(start)
    # near the 15-digit limit now and then: the timestamp grows a 16th digit within the run
    ts0 = data.draw(st.one_of(st.integers(0, 10**6), st.just(10**15 - 300)))
    for k in range(data.draw(st.integers(1, 30))):
        seq, chunk = general._highest_seq + 1, max(general._timeline.next_chunk, 1)
        first = general._timeline.first_ts
        ts: int | str = ts0 if first is None else first + general._timeline.pos // 8 + data.draw(
            st.sampled_from([0, 0, 0, 1, 40, 41, -1]))
        if k and data.draw(st.integers(0, 9)) == 0:  # the right number misspelled (non-ASCII digits, empty, ...)
            ts = data.draw(st.sampled_from(_MISSPELLED))(ts)
        size = data.draw(st.sampled_from([160] * 6 + [0, 1, 3]))
        text = _layout(seq, sid, track, chunk, ts, bytes((k + i) % 256 for i in range(size)))
        if k and data.draw(st.booleans()):
            text = data.draw(_mutated(text))
        want = _outcome(general, text)
        assert _outcome_one(one, text) == want, text
        assert _outcome(text_path, text) == want, text
        assert _outcome_frame(frame, text) == want, text
        assert _snapshot(one) == _snapshot(general) == _snapshot(text_path) == _snapshot(frame), text


def test_in_step_layout_messages_skip_the_full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not vacuous: after the first frame (the general path's), every in-step message in Twilio's layout is
    parsed by the fixed layout, never by msgspec's full decode; a mutated one is (and is refused the same)."""
    import engine.twilio.protocol as protocol

    decodes = []
    full = protocol._inbound_decoder

    class _Counting:  # the full decodes of `stream` alone (`general`'s go through the same decoder)
        counting = False

        def decode(self, text: str | bytes) -> InboundMessage:
            if self.counting:
                decodes.append(text)
            return full.decode(text)

    counting = _Counting()

    def outcome_one(text: str) -> tuple[str, object]:
        counting.counting = True
        try:
            return _outcome_one(stream, text)
        finally:
            counting.counting = False

    monkeypatch.setattr(protocol, "_inbound_decoder", counting)
    stream, general = TwilioStream(), _GeneralOnly()
    start = json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {"streamSid": SID}})
    stream.receive_text(start)
    general.receive_text(start)
    for k in range(1, 301):
        text = _layout(k + 1, SID, "inbound", k, 7 + k * 20 + (40 if k % 3 == 0 else 0), bytes([k % 256]) * 160)
        assert outcome_one(text) == _outcome(general, text)
    assert len(decodes) == 1  # the first frame: it sets the timeline's origin
    bad = _layout(302, SID, "inbound", 301, 7 + 301 * 20, bytes(160)).replace('"payload":"', '"payload":"=')
    refused = _outcome(general, bad)
    assert outcome_one(bad) == refused and refused[0] == "error"
    # the refused one: decoded by the msgspec fast path, then again by the general path, which reports it
    assert len(decodes) == 3 and _snapshot(stream) == _snapshot(general)


_ASCII = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=126, max_size=400).map(str.encode)


# Weighted towards the read one() is for (whole, undamaged, nothing before or after it), so each of its checks
# meets, within the bounded run, a read it must refuse; the examples pin the boundaries.
@given(st.one_of(st.binary(max_size=125), st.binary(min_size=126, max_size=400), _ASCII),
       st.one_of(st.just(b"\0\0\0\0"), st.binary(min_size=4, max_size=4)),
       st.sampled_from([0] * 6 + [1, 2, 3, 4, 5, 6, 7]), st.sampled_from([0, 125, 126, 127, 300, 65535]),
       st.one_of(st.just(b""), st.binary(max_size=12)), st.sampled_from([0] * 5 + [1, 3, 9]))
@example(b"a" * 126, b"\0\0\0\0", 0, 126, b"", 0)  # the shortest 16-bit length, exactly at the limit
@example(b"a" * 300, b"\0\0\0\0", 0, 300, b"", 0)  # exactly at the limit
@example(b"a" * 301, b"\0\0\0\0", 0, 300, b"", 0)  # one past it: wsproto's (1009)
@example(b"a" * 200, b"\0\0\0\0", 6, 0, b"", 0)  # unmasked, 16-bit length
@example(bytes(range(33, 126)) * 50, b"\x01\x82\x03\xf4", 0, 0, b"", 0)  # > 4 KiB: apply_mask's way in one()
@example(bytes(range(33, 126)) * 2 + b"ab", b"\x01\x82\x03\xf4", 0, 0, b"", 0)  # not a multiple of 4 bytes
@example(b"a" * 200, b"\0\0\0\0", 0, 0, b"", 3)  # a partial frame buffered before a whole one
# A masked 7-bit frame whose key and a 3-byte tail read as a 16-bit length (126) that matches the read's size.
@example(b"a" * 125, b"\x00\x7e\x00\x00", 0, 300, b"\x01\x01\x01", 0)
def test_one_frame_read_equals_the_general_loop(payload: bytes, mask: bytes, damage: int, limit_pick: int,
                                                tail: bytes, lead: int) -> None:
    text = payload.decode("utf-8", "replace").encode()
    frame = bytearray(encode_frame(0x1, text if damage != 1 else payload, mask))
    if damage == 2 and len(frame) > 4:
        frame[len(frame) // 2] ^= 0xFF  # may break the UTF-8 or nothing at all
    if damage == 3:
        frame = frame[:-1]  # one byte short: incomplete
    if damage == 4:  # a 16-bit length that 7 bits could hold: not minimal, a protocol error (wsproto's)
        short = text[:125]
        frame = bytearray(bytes((0x81, 0x80 | 126)) + len(short).to_bytes(2, "big") + mask + apply_mask(short, mask))
    if damage == 5:  # another first byte: binary, no FIN (a fragment), RSV1 (an extension), a ping
        frame[0] = (0x82, 0x01, 0xC1, 0x89)[len(payload) % 4]
    if damage == 6:  # the mask bit cleared: an unmasked frame, which a client must not send
        frame[1] &= 0x7F
    if damage == 7:  # a 64-bit length (legal for any size, but not the shape of a Twilio message)
        frame = bytearray(bytes((0x81, 0x80 | 127)) + len(text).to_bytes(8, "big") + mask + apply_mask(text, mask))
    data = bytes(frame) + tail  # the frame alone, or followed by part of the next one
    limit = limit_pick or 64 * 1024
    # ``lead`` bytes of another fast frame already buffered (a frame split across reads) before this read
    pending = encode_frame(0x1, b"x" * 100, mask)[:lead]
    fast, general = TextFrameDecoder(limit), TextFrameDecoder(limit)
    assert fast.feed(pending) == general.feed(pending) == ([], None)
    got = fast.one(data)
    raw = fast.raw(data)
    assert fast._buffer == general._buffer  # one() and raw() change no state, whatever they answer
    if raw is None:
        assert got is None
    else:  # one() is raw() decoded, or None where the bytes are not UTF-8 (then feed() hands them to wsproto)
        try:
            assert got == raw.decode()
        except UnicodeDecodeError:
            assert got is None
    first, rest = general.feed(data[:1])  # the general loop, the frame split over two reads
    want = (first + (second := general.feed(data[1:]))[0], second[1]) if rest is None else (first, rest + data[1:])
    whole = not general._buffer and want[1] is None and len(want[0]) == 1
    if got is not None:
        assert whole and want[0] == [got]
    # Not vacuous: every read that is one whole masked text frame with a 16-bit length, within the limit, no
    # partial frame before it, decoded by the general loop, is taken by one().
    if whole and not pending and data[1] == 0x80 | 126 and len(data) == 8 + int.from_bytes(data[2:4], "big"):
        assert got == want[0][0]


@given(st.lists(st.tuples(st.one_of(st.text(max_size=130), st.text(min_size=120, max_size=600),
                                     st.text(min_size=4000, max_size=4200)),
                           st.binary(min_size=4, max_size=4)), min_size=1, max_size=6),
       st.lists(st.integers(0, 30_000), max_size=6))
def test_feed_decodes_every_fast_frame_itself_however_the_reads_cut_them(frames: list[tuple[str, bytes]],
                                                                       cuts: list[int]) -> None:
    """Not vacuous: ``feed`` (the general loop, a late pass's reads of several frames) decodes each frame of the
    shape it is for itself, whole or split across reads: it never hands one to wsproto. (The differential test
    against wsproto, fuzz/test_twilio_wsconn_fuzz.py, cannot see a wrong decode that fails as bad UTF-8: the
    hand-over then decodes it right.)"""
    data = b"".join(encode_frame(0x1, text.encode(), mask) for text, mask in frames)
    decoder, got = TextFrameDecoder(64 * 1024), []
    for chunk in cut(data, cuts):
        messages, rest = decoder.feed(chunk)
        assert rest is None
        got += messages
    assert got == [text for text, _ in frames] and not decoder._buffer


@given(st.binary(max_size=(_REPUNIT_MAX_WORDS + 8) * 4), st.binary(min_size=4, max_size=4))
def test_apply_mask_is_the_rfc_xor(data: bytes, mask: bytes) -> None:
    """The Python fallback, both sides of its small-frame limit."""
    assert apply_mask_py(data, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@given(st.binary(max_size=(_REPUNIT_MAX_WORDS + 8) * 4), st.binary(min_size=4, max_size=4))
def test_the_decoders_unmask_is_the_rfc_xor(data: bytes, mask: bytes) -> None:
    """The project's masking is websockets' C apply_mask (installed: a dependency)."""
    assert c_unmask is not None and apply_mask is c_unmask
    assert apply_mask(data, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))


# An on-time layout message's end, as a peer might break it: each one the full decode refuses or reads otherwise.
_ENDS = ['"}]', '"]}', '"} }', '"}}}', '"}', '}}', '"}}x', '"},}', '" }}', '"}}\n', '=="}}', '"}}"}}']


@pytest.mark.parametrize("max_gap_ms", [10_000, 30, 0, -5])  # 0 and -5: the in-step bound is 0 / negative
@pytest.mark.parametrize("end", ["", *_ENDS])
def test_the_exact_head_takes_what_the_full_decode_takes(max_gap_ms: int, end: str) -> None:
    """On-time layout messages (the exact head's own case; the hypothesis tests above meet it only now and then)
    with their end broken in every way the layout's checks are about, and streams whose in-step bound is zero or
    negative (no message is in step at its timestamp: the general path resyncs): the per-message path
    (``receive_frame``, else ``receive_full``) and the general path alone agree, message by message."""
    frame, general = TwilioStream(max_gap_ms=max_gap_ms), _GeneralOnly(max_gap_ms=max_gap_ms)
    start = json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {"streamSid": SID}})
    for stream in (frame, general):
        stream.receive_text(start)
    for k in range(1, 8):
        text = _layout(k + 1, SID, "inbound", k, 52 + (k - 1) * 20, bytes([k]) * 160)
        if k == 4 and end:
            text = text[:-3] + end
        assert _outcome_frame(frame, text) == _outcome(general, text), text
        assert _snapshot(frame) == _snapshot(general), text
    if not end:
        assert frame.stats.frames == 7
