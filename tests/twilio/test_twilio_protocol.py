"""TwilioStream: every message, every error path, the timeline (gaps, duplicates, late frames)."""

from __future__ import annotations

import base64
import json

import pytest

from engine.media import AudioReceived, DtmfReceived, MarkReached, StreamStopped
from engine.twilio.protocol import (
    Connected,
    Started,
    TwilioProtocolError,
    TwilioStream,
    decode_inbound,
    decode_outbound,
    encode_clear,
    encode_mark,
    encode_media,
)

SID = "MZ" + "a" * 32


def connected() -> str:
    return '{"event":"connected","protocol":"Call","version":"1.0.0"}'


def start(seq: int = 1, sid: str = SID, tracks: list[str] | None = None, fmt: dict | None = None) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": str(seq), "streamSid": sid,
        "start": {"accountSid": "AC" + "1" * 32, "streamSid": sid, "callSid": "CA" + "2" * 32,
                  "tracks": tracks or ["inbound"], "customParameters": {"lang": "ko"},
                  "mediaFormat": fmt or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
    })


def media(seq: int, chunk: int, ts: int, payload: bytes = b"\x01" * 160, track: str = "inbound",
          sid: str = SID) -> str:
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": sid,
                       "media": {"track": track, "chunk": str(chunk), "timestamp": str(ts),
                                 "payload": base64.b64encode(payload).decode()}})


def dtmf(seq: int, digit: str = "5") -> str:
    return json.dumps({"event": "dtmf", "sequenceNumber": str(seq), "streamSid": SID,
                       "dtmf": {"track": "inbound_track", "digit": digit}})


def mark(seq: int, name: str = "m1") -> str:
    return json.dumps({"event": "mark", "sequenceNumber": str(seq), "streamSid": SID, "mark": {"name": name}})


def stop(seq: int) -> str:
    return json.dumps({"event": "stop", "sequenceNumber": str(seq), "streamSid": SID,
                       "stop": {"accountSid": "AC" + "1" * 32, "callSid": "CA" + "2" * 32}})


def started_stream(**kw: object) -> TwilioStream:
    s = TwilioStream(**kw)  # type: ignore[arg-type]
    s.receive_text(connected())
    s.receive_text(start())
    return s


def payloads(events: list) -> bytes:
    return b"".join(e.payload for e in events if isinstance(e, AudioReceived))


def twilio_ms(s: TwilioStream, event: AudioReceived) -> float:
    """The Twilio timestamp (call timeline) of ``event``'s first sample, as the stream places it now."""
    assert s.first_timestamp_ms is not None
    return s.first_timestamp_ms + event.timestamp_ms


def test_every_inbound_message() -> None:
    s = TwilioStream()
    assert s.receive_text(connected()) == [Connected("Call", "1.0.0")]
    [st] = s.receive_text(start())
    assert isinstance(st, Started)
    assert st.stream_sid == SID and st.call_sid == "CA" + "2" * 32 and st.account_sid == "AC" + "1" * 32
    assert st.tracks == ("inbound",) and st.custom_parameters == {"lang": "ko"}
    assert st.media_format.sample_rate == 8000
    [m] = s.receive_text(media(2, 1, 52, b"\x00\x01\x02"))
    assert m == AudioReceived(b"\x00\x01\x02", 0.0, False) and twilio_ms(s, m) == 52
    assert s.receive_text(dtmf(3, "#")) == [DtmfReceived("#")]
    assert s.receive_text(mark(4, "greeting")) == [MarkReached("greeting")]
    assert s.receive_text(stop(5)) == [StreamStopped("stop")]
    assert s.stop is not None and s.stop.call_sid == "CA" + "2" * 32
    assert s.state == "stopped"
    assert s.stats.frames == 1 and s.stats.dtmf == 1 and s.stats.marks == 1 and s.stats.errors == 0


def test_bytes_input_is_a_binary_frame_error() -> None:
    s = started_stream()
    with pytest.raises(TwilioProtocolError) as info:
        s.receive_text(b'{"event":"connected"}')
    assert info.value.kind == "binary"
    assert s.stats.errors == 1


@pytest.mark.parametrize(("text", "kind"), [
    ("{", "json"),
    ("not json", "json"),
    ("[]", "schema"),
    ('"media"', "schema"),
    ("{}", "schema"),
    ('{"event": 5}', "schema"),
    ('{"event":"media","streamSid":"MZ","media":{"chunk":1,"timestamp":"1","payload":""}}', "schema"),
    ('{"event":"media","streamSid":"MZ","media":{"chunk":"1","timestamp":"1","payload":"%%%"}}', "base64"),
    ('{"event":"media","streamSid":"MZ","media":{"chunk":"1","timestamp":"1","payload":"AAA"}}', "base64"),
    ('{"event":"start","streamSid":"MZ"}', "schema"),
])
def test_malformed_messages(text: str, kind: str) -> None:
    s = started_stream()
    with pytest.raises(TwilioProtocolError) as info:
        s.receive_text(text)
    assert info.value.kind == kind
    assert s.stats.errors == 1


@pytest.mark.parametrize("value", ["-1", "1.5", "", " 7", "+3", "1e3", "٣", "9" * 40, "0x10"])
def test_integer_strings_must_be_plain_digits(value: str) -> None:
    s = started_stream()
    text = json.dumps({"event": "media", "sequenceNumber": "2", "streamSid": SID,
                       "media": {"chunk": value, "timestamp": "20", "payload": "AAAA"}})
    with pytest.raises(TwilioProtocolError) as info:
        s.receive_text(text)
    assert info.value.kind == "schema"


def test_oversized_message() -> None:
    s = started_stream(max_message_bytes=1024)
    with pytest.raises(TwilioProtocolError) as info:
        s.receive_text(media(2, 1, 20, b"\x00" * 2000))
    assert info.value.kind == "oversized"
    assert s.receive_text(media(3, 2, 40))  # the stream carries on


@pytest.mark.parametrize("text_fn", [lambda: media(2, 1, 20), lambda: dtmf(2), lambda: mark(2), lambda: stop(2)])
def test_messages_before_start_are_order_errors(text_fn) -> None:
    s = TwilioStream()
    s.receive_text(connected())
    with pytest.raises(TwilioProtocolError) as info:
        s.receive_text(text_fn())
    assert info.value.kind == "order"


def test_order_errors_after_start_and_after_stop() -> None:
    s = started_stream()
    for text in (connected(), start(9)):
        with pytest.raises(TwilioProtocolError) as info:
            s.receive_text(text)
        assert info.value.kind == "order"
    s.receive_text(stop(2))
    with pytest.raises(TwilioProtocolError) as info:
        s.receive_text(media(3, 1, 20))
    assert info.value.kind == "order"


def test_start_without_connected_is_accepted_and_noted() -> None:
    s = TwilioStream()
    assert isinstance(s.receive_text(start())[0], Started)
    assert s.stats.missing_connected


def test_unsupported_media_format_is_fatal() -> None:
    s = TwilioStream()
    with pytest.raises(TwilioProtocolError) as info:
        s.receive_text(start(fmt={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}))
    assert info.value.kind == "format" and info.value.fatal


def test_wrong_stream_sid() -> None:
    s = started_stream()
    with pytest.raises(TwilioProtocolError) as info:
        s.receive_text(media(2, 1, 20, sid="MZ" + "b" * 32))
    assert info.value.kind == "stream_sid"
    bad_start = json.loads(start())
    bad_start["start"]["streamSid"] = "MZother"
    with pytest.raises(TwilioProtocolError) as info:
        TwilioStream().receive_text(json.dumps(bad_start))
    assert info.value.kind == "stream_sid"


def test_unknown_events_and_fields_are_ignored_and_recorded() -> None:
    s = TwilioStream()
    assert s.receive_text('{"event":"transcription","streamSid":"x"}') == []
    assert s.stats.unknown_events == 1 and s.stats.unknown_event_names == {"transcription"}
    text = json.loads(start())
    text["newTopLevel"] = 1
    text["start"]["mediaFormat"]["bitRate"] = 64
    assert isinstance(s.receive_text(json.dumps(text))[0], Started)
    assert s.stats.unknown_fields == {"newTopLevel", "start.mediaFormat.bitRate"}
    assert s.stats.errors == 0


def test_gap_is_filled_with_silence_at_the_right_place() -> None:
    s = started_stream()
    a, b, c = b"\x10" * 160, b"\x20" * 160, b"\x30" * 160
    out = s.receive_text(media(2, 1, 52, a)) + s.receive_text(media(3, 2, 72, b))
    out += s.receive_text(media(6, 5, 132, c))  # chunks 3, 4 (40 ms) lost
    assert payloads(out) == a + b + b"\xff" * 320 + c
    filled = [e for e in out if isinstance(e, AudioReceived) and e.filled]
    assert filled == [AudioReceived(b"\xff" * 320, 320 / 8, True)] and twilio_ms(s, filled[0]) == 92
    assert out[-1] == AudioReceived(c, 640 / 8, False) and twilio_ms(s, out[-1]) == 132
    assert s.stats.filled_frames == 1 and s.stats.filled_bytes == 320 and s.stats.sequence_gaps == 2


def test_late_frame_after_its_gap_was_filled_is_reordered_and_dropped() -> None:
    s = started_stream()
    s.receive_text(media(2, 1, 20))
    s.receive_text(media(4, 3, 60))  # chunk 2 filled
    assert s.receive_text(media(3, 2, 40)) == []
    assert s.stats.reordered == 1 and s.stats.duplicates == 0


def test_duplicate_sequence_number_is_dropped() -> None:
    s = started_stream()
    first = s.receive_text(media(2, 1, 20))
    assert first
    assert s.receive_text(media(2, 1, 20)) == []
    assert s.receive_text(dtmf(3)) == [DtmfReceived("5")]
    assert s.receive_text(dtmf(3)) == []
    assert s.stats.duplicates == 2


def test_duplicate_chunk_with_new_sequence_is_dropped() -> None:
    s = started_stream()
    s.receive_text(media(2, 1, 20))
    assert s.receive_text(media(3, 1, 20)) == []
    assert s.stats.duplicates == 1


def test_late_non_media_message_is_delivered_and_counted() -> None:
    s = started_stream()
    s.receive_text(media(3, 1, 20))  # seq 2 not yet seen
    assert s.receive_text(mark(2, "late")) == [MarkReached("late")]
    assert s.stats.reordered == 1


def test_messages_without_sequence_numbers_are_accepted() -> None:
    s = started_stream()
    text = json.dumps({"event": "media", "streamSid": SID,
                       "media": {"chunk": "1", "timestamp": "20", "payload": "AAAA"}})
    assert s.receive_text(text) == [AudioReceived(b"\x00\x00\x00", 0.0, False)]
    assert s.first_timestamp_ms == 20


def test_outbound_track_is_not_mixed_into_inbound() -> None:
    s = started_stream()
    out = s.receive_text(media(2, 1, 20, b"\x01" * 160))
    out += s.receive_text(media(3, 1, 20, b"\x02" * 160, track="outbound"))
    out += s.receive_text(media(4, 2, 40, b"\x03" * 160))
    assert payloads(out) == b"\x01" * 160 + b"\x03" * 160
    assert s.stats.other_track_frames == 1
    o = started_stream(track="outbound")
    out = o.receive_text(media(2, 1, 20, b"\x01" * 160)) + o.receive_text(media(3, 1, 20, b"\x02" * 160, "outbound"))
    assert payloads(out) == b"\x02" * 160


def test_small_timestamp_jitter_is_not_a_gap_but_a_big_jump_is() -> None:
    s = started_stream()
    out = s.receive_text(media(2, 1, 20)) + s.receive_text(media(3, 2, 41)) + s.receive_text(media(4, 3, 59))
    assert not any(e.filled for e in out if isinstance(e, AudioReceived))
    out = s.receive_text(media(5, 4, 1080))  # contiguous chunk, 1 s later: silence was skipped
    assert out[0].filled and len(out[0].payload) == (1080 - 20) * 8 - 480
    assert s.stats.timestamp_jumps == 1


def test_huge_gap_resyncs_instead_of_filling() -> None:
    s = started_stream(max_gap_ms=1000)
    s.receive_text(media(2, 1, 20))
    out = s.receive_text(media(3, 2, 10_000_000))
    assert [e.filled for e in out] == [False]
    assert out[0].timestamp_ms == 160 / 8 and twilio_ms(s, out[0]) == 10_000_000
    assert s.stats.resyncs == 1
    assert s.receive_text(media(4, 3, 10_000_020))[0].timestamp_ms == 320 / 8


def test_chunk_gap_without_timestamp_gap_fills_nothing() -> None:
    s = started_stream()
    s.receive_text(media(2, 1, 20))
    out = s.receive_text(media(3, 5, 40))
    assert [e.filled for e in out] == [False]


def test_outbound_encoders_round_trip() -> None:
    m = decode_outbound(encode_media(SID, b"\x01\x02"))
    assert m.stream_sid == SID and m.media.payload == b"\x01\x02"  # type: ignore[union-attr]
    assert json.loads(encode_media(SID, b"\xff"))["media"] == {"payload": "/w=="}
    assert json.loads(encode_mark(SID, "x")) == {"event": "mark", "streamSid": SID, "mark": {"name": "x"}}
    assert json.loads(encode_clear(SID)) == {"event": "clear", "streamSid": SID}
    with pytest.raises(TwilioProtocolError):
        decode_outbound('{"event":"start"}')


def test_the_media_fast_path_leaves_nothing_for_the_garbage_collector() -> None:
    """Issue 13: 50 messages a second a call; the decoded media message (gc=False) and the fast path's lone event
    (no list) are not tracked by the collector, so the frames add nothing towards a collection."""
    import gc

    s = started_stream()
    s.receive_text(media(2, 1, 0))  # the timeline's first frame: the general path
    got = s.receive_one(media(3, 2, 20))
    assert isinstance(got, AudioReceived) and not gc.is_tracked(got)
    assert not gc.is_tracked(decode_inbound(media(4, 3, 40)))
