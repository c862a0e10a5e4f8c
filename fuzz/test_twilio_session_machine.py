"""A hypothesis state machine over one Twilio session (``TwilioStream``).

Random interleavings of valid messages (connected, start, media with jitter, drops, duplicates and
reordering, the other track, dtmf, marks, stop) and invalid ones (garbage, binary, oversized, bad
base64, wrong streamSid, out of order). Invariants after every step:

* nothing but ``TwilioProtocolError`` escapes;
* the timeline is monotonic and contiguous: each ``AudioReceived`` starts (``timestamp_ms`` × 8 bytes) where
  the previous one ended, and its Twilio timestamp (``first_timestamp_ms`` + ``timestamp_ms``) never goes back;
* every valid media frame is accounted for: decoded exactly once in chunk order, or counted as dropped
  (duplicate, reordered/late, other track) — ``decoded + dropped == valid frames sent``.
"""

from __future__ import annotations

import base64
import itertools

import msgspec
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.media import AudioReceived, StreamStopped
from engine.twilio.protocol import BYTES_PER_MS, Started, TwilioProtocolError, TwilioStream

SID = "MZ" + "a" * 32
OTHER = "MZ" + "b" * 32
MAX_BYTES = 4096


def _payload(chunk: int) -> bytes:
    """160 bytes that name their chunk, so a decoded frame can be traced back to what was sent."""
    return (chunk.to_bytes(2, "big") + b"\x7f") * 53 + b"\x00"


def _enc(obj: object) -> str:
    return msgspec.json.encode(obj).decode()


class TwilioSessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.proto = TwilioStream(MAX_BYTES, "inbound", max_gap_ms=2000)
        self.state = "idle"
        self.seq = 1
        self.chunk = 0  # next inbound chunk number to use
        self.ts = 100
        self.sent_frames: dict[int, str] = {}  # chunk -> message, for duplicates and late delivery
        self.skipped: list[tuple[int, int, int]] = []  # (chunk, seq, ts) lost on the way; may arrive late
        self.valid_frames = 0
        self.decoded_chunks: list[int] = []
        self.last_end: int | None = None
        self.last_ts = -1.0
        self.expected_errors = 0

    # -- plumbing --------------------------------------------------------------------------------
    def _feed(self, message: str | bytes, *, valid: bool) -> None:
        before = self.proto.stats.errors
        try:
            events = self.proto.receive_text(message)
        except TwilioProtocolError:
            assert not valid, f"valid message rejected: {message[:200]!r}"
            assert self.proto.stats.errors == before + 1
            return
        for event in events:
            if isinstance(event, AudioReceived):
                offset = event.timestamp_ms * BYTES_PER_MS
                assert offset == int(offset)
                if self.last_end is not None:
                    assert offset == self.last_end, "timeline not contiguous"
                first = self.proto.first_timestamp_ms
                assert first is not None
                twilio_ts = first + event.timestamp_ms
                assert twilio_ts >= self.last_ts, "timestamp went back"
                self.last_end = int(offset) + len(event.payload)
                self.last_ts = twilio_ts
                if not event.filled:
                    assert len(event.payload) == 160
                    self.decoded_chunks.append(int.from_bytes(event.payload[:2], "big"))
                else:
                    assert set(event.payload) == {0xFF}
            elif isinstance(event, Started):
                self.state = "started"
            elif isinstance(event, StreamStopped):
                self.state = "stopped"

    def _media(self, chunk: int, seq: int, ts: int, *, track: str = "inbound", sid: str = SID) -> str:
        return _enc({"event": "media", "sequenceNumber": str(seq), "streamSid": sid, "media": {
            "track": track, "chunk": str(chunk), "timestamp": str(ts),
            "payload": base64.b64encode(_payload(chunk)).decode()}})

    # -- valid messages --------------------------------------------------------------------------
    @precondition(lambda self: self.state == "idle")
    @rule()
    def connected(self) -> None:
        self._feed(_enc({"event": "connected", "protocol": "Call", "version": "1.0.0"}), valid=True)
        self.state = "connected"

    @precondition(lambda self: self.state in ("idle", "connected"))
    @rule()
    def start(self) -> None:
        self._feed(_enc({"event": "start", "sequenceNumber": str(self.seq), "streamSid": SID, "start": {
            "streamSid": SID, "callSid": "CA1", "accountSid": "AC1", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}), valid=True)
        self.seq += 1
        assert self.state == "started"

    @precondition(lambda self: self.state == "started")
    @rule(jitter=st.integers(-5, 5), drop=st.integers(0, 3), stall=st.sampled_from([0, 0, 0, 60, 2600]))
    def media(self, jitter: int, drop: int, stall: int) -> None:
        """Next frame; ``drop`` frames before it are lost on the way; ``stall`` ms ahead moves the timestamp."""
        for _ in range(drop):
            self.chunk += 1
            self.ts += 20
            self.skipped.append((self.chunk, self.seq, self.ts))
            self.seq += 1
        self.chunk += 1
        self.ts += 20 + stall
        message = self._media(self.chunk, self.seq, max(0, self.ts + jitter))
        self.sent_frames[self.chunk] = message
        self.seq += 1
        self.valid_frames += 1
        self._feed(message, valid=True)

    @precondition(lambda self: self.state == "started" and self.sent_frames)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        chunk = data.draw(st.sampled_from(sorted(self.sent_frames)[-20:]))
        self.valid_frames += 1
        self._feed(self.sent_frames[chunk], valid=True)

    @precondition(lambda self: self.state == "started" and self.skipped)
    @rule(data=st.data())
    def late(self, data: st.DataObject) -> None:
        """A frame 'dropped' earlier arrives after all (reordered)."""
        entry = data.draw(st.sampled_from(self.skipped))
        self.skipped.remove(entry)
        chunk, seq, ts = entry
        message = self._media(chunk, seq, ts)
        self.sent_frames[chunk] = message
        self.valid_frames += 1
        self._feed(message, valid=True)

    @precondition(lambda self: self.state == "started")
    @rule()
    def other_track(self) -> None:
        self.valid_frames += 1
        self._feed(self._media(1, self.seq, self.ts, track="outbound"), valid=True)
        self.seq += 1

    @precondition(lambda self: self.state == "started")
    @rule(kind=st.sampled_from(["dtmf", "mark"]))
    def dtmf_or_mark(self, kind: str) -> None:
        body = {"digit": "5"} if kind == "dtmf" else {"name": "m1"}
        self._feed(_enc({"event": kind, "streamSid": SID, kind: body}), valid=True)

    @precondition(lambda self: self.state == "started")
    @rule()
    def stop(self) -> None:
        self._feed(_enc({"event": "stop", "sequenceNumber": str(self.seq), "streamSid": SID, "stop": {}}), valid=True)
        self.seq += 1
        assert self.state == "stopped"

    # -- invalid messages ------------------------------------------------------------------------
    @rule(message=st.one_of(
        st.text(max_size=60), st.binary(max_size=60),
        st.sampled_from(['{"event":"media"}', "[]", "null", '{"event":"start"}', '{"event":7}',
                         '{"event":"media","streamSid":"MZ","media":{"chunk":"1","timestamp":"1","payload":"***"}}',
                         '{"event":"media","streamSid":"MZ","media":{"chunk":"-1","timestamp":"x","payload":""}}']),
    ))
    def garbage(self, message: str | bytes) -> None:
        frames_before = self.proto.stats.frames
        self._feed(message, valid=False)
        assert self.proto.stats.frames == frames_before  # garbage never becomes audio

    @rule()
    def oversized(self) -> None:
        self._feed('{"event":"media","x":"' + "y" * MAX_BYTES + '"}', valid=False)

    @rule()
    def wrong_stream(self) -> None:
        self._feed(self._media(self.chunk + 1, self.seq + 1000, self.ts, sid=OTHER), valid=False)

    @precondition(lambda self: self.state != "started")
    @rule()
    def media_out_of_order(self) -> None:
        frames_before = self.proto.stats.frames
        self._feed(self._media(self.chunk + 1, self.seq, self.ts), valid=False)
        assert self.proto.stats.frames == frames_before

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def decoded_in_chunk_order_once(self) -> None:
        chunks = self.decoded_chunks
        assert all(a < b for a, b in itertools.pairwise(chunks)), chunks

    @invariant()
    def every_valid_frame_accounted_for(self) -> None:
        s = self.proto.stats
        dropped = s.duplicates + s.reordered + s.other_track_frames
        assert len(self.decoded_chunks) + dropped == self.valid_frames, (len(self.decoded_chunks), s, self.valid_frames)
        assert s.frames == len(self.decoded_chunks)
        assert s.bytes == 160 * len(self.decoded_chunks)


TestTwilioSession = TwilioSessionMachine.TestCase
