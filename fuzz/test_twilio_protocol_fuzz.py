"""Properties of the Twilio protocol: total on any input, timeline-exact on any valid stream."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from msgspec import UNSET

from engine.media import AudioReceived
from engine.twilio.protocol import (
    ConnectedMessage,
    DtmfInfo,
    DtmfMessage,
    InboundMedia,
    MarkInfo,
    MarkMessage,
    MediaFormat,
    MediaMessage,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    OutboundPayload,
    StartInfo,
    StartMessage,
    StopInfo,
    StopMessage,
    TwilioProtocolError,
    TwilioStream,
    decode_inbound,
    decode_outbound,
    encode,
)

SID = "MZ" + "0" * 32
CONNECTED = encode(ConnectedMessage())
START = encode(StartMessage(sequence_number="1", stream_sid=SID, start=StartInfo(stream_sid=SID, tracks=["inbound",
                                                                                                       "outbound"])))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)
event_names = st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "clear", "other"])
near_valid = st.fixed_dictionaries(
    {"event": event_names},
    optional={
        "sequenceNumber": st.one_of(st.text(max_size=6), st.integers(), st.from_regex(r"\A[0-9]{1,4}\Z")),
        "streamSid": st.one_of(st.just(SID), st.text(max_size=4)),
        "media": st.fixed_dictionaries({}, optional={
            "chunk": st.one_of(st.from_regex(r"\A[0-9]{1,6}\Z"), json_values),
            "timestamp": st.one_of(st.from_regex(r"\A[0-9]{1,9}\Z"), json_values),
            "payload": st.one_of(st.sampled_from(["", "AAAA", "/w==", "AA", "!!"]), json_values),
            "track": st.sampled_from(["inbound", "outbound", "x"]),
        }),
        "start": json_values, "dtmf": json_values, "mark": json_values, "stop": json_values,
    },
)


def _feed(stream: TwilioStream, message: str | bytes) -> None:
    try:
        events = stream.receive_text(message)
    except TwilioProtocolError:
        return
    assert isinstance(events, list)


@given(st.binary(max_size=600))
def test_any_bytes_is_events_or_protocol_error(data: bytes) -> None:
    for prelude in ([], [CONNECTED, START]):
        stream = TwilioStream(max_message_bytes=512)
        for text in prelude:
            stream.receive_text(text)
        _feed(stream, data)
        _feed(stream, data.decode("utf-8", "replace"))
        _feed(stream, data.decode("latin-1"))


@given(st.lists(json_values | near_valid, max_size=8))
def test_any_json_values_are_events_or_protocol_errors(values: list[object]) -> None:
    for prelude in ([], [CONNECTED, START]):
        stream = TwilioStream()
        for text in prelude:
            stream.receive_text(text)
        for value in values:
            _feed(stream, json.dumps(value))


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[list[str], bytes]:
    """A call's inbound audio split into frames of any size, some lost, interleaved with other traffic.

    Returns the wire messages (sequence numbers in send order) and the audio the timeline must hold.
    """
    sizes = draw(st.lists(st.integers(1, 50).map(lambda n: n * 8), min_size=1, max_size=25))
    audio = draw(st.binary(min_size=sum(sizes), max_size=sum(sizes)))
    lost = draw(st.sets(st.integers(1, max(1, len(sizes) - 2)), max_size=len(sizes) // 3)) if len(sizes) > 2 else set()
    first_ts = draw(st.integers(1, 500))
    inbound: list[tuple[str, object]] = []
    expected = bytearray()
    pos = 0
    for i, size in enumerate(sizes):
        piece = audio[pos:pos + size]
        if i in lost:
            expected += b"\xff" * size
        else:
            expected += piece
            inbound.append(("media", InboundMedia(chunk=str(i + 1), timestamp=str(first_ts + pos // 8),
                                                  payload=piece, track="inbound")))
        pos += size
    others: list[tuple[str, object]] = []
    for j in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["outbound", "dtmf", "mark"]))
        if kind == "outbound":
            others.append(("media", InboundMedia(chunk=str(j + 1), timestamp=str(j * 20),
                                                 payload=draw(st.binary(max_size=40)), track="outbound")))
        elif kind == "dtmf":
            others.append(("dtmf", DtmfInfo(digit=draw(st.sampled_from("0123456789*#")))))
        else:
            others.append(("mark", MarkInfo(name=draw(st.text(max_size=8)))))
    # Any interleaving that keeps each source's own order.
    merged: list[tuple[str, object]] = []
    a, b = list(inbound), list(others)
    while a or b:
        take_a = bool(a) and (not b or draw(st.booleans()))
        merged.append(a.pop(0) if take_a else b.pop(0))
    messages = [CONNECTED, START]
    seq = 1
    lost_seqs = draw(st.integers(0, 3))
    for kind, body in merged:
        seq += 1 + (lost_seqs if seq == 2 else 0)  # lost non-media messages leave sequence gaps
        number = str(seq)
        if kind == "media":
            assert isinstance(body, InboundMedia)
            messages.append(encode(MediaMessage(sequence_number=number, stream_sid=SID, media=body)))
        elif kind == "dtmf":
            assert isinstance(body, DtmfInfo)
            messages.append(encode(DtmfMessage(sequence_number=number, stream_sid=SID, dtmf=body)))
        else:
            assert isinstance(body, MarkInfo)
            messages.append(encode(MarkMessage(sequence_number=number, stream_sid=SID, mark=body)))
    messages.append(encode(StopMessage(sequence_number=str(seq + 1), stream_sid=SID)))
    return messages, bytes(expected)


def _decoded(messages: list[str]) -> tuple[bytes, TwilioStream]:
    stream = TwilioStream()
    out = bytearray()
    offset = 0
    for message in messages:
        for event in stream.receive_text(message):
            if isinstance(event, AudioReceived):
                assert event.timestamp_ms * 8 == offset
                offset += len(event.payload)
                out += event.payload
    return bytes(out), stream


@given(valid_streams())
def test_any_valid_interleaving_yields_the_call_timeline(case: tuple[list[str], bytes]) -> None:
    messages, expected = case
    audio, stream = _decoded(messages)
    assert audio == expected
    assert stream.state == "stopped" and stream.stats.errors == 0


@given(valid_streams(), st.data())
def test_duplicated_messages_do_not_change_the_audio(case: tuple[list[str], bytes], data: st.DataObject) -> None:
    messages, expected = case
    body = messages[2:-1]
    if body:
        for _ in range(data.draw(st.integers(1, 5))):
            i = data.draw(st.integers(0, len(body) - 1))
            j = data.draw(st.integers(i + 1, len(body)))
            body.insert(j, body[i])  # a repeat, delivered later than the original
    audio, _ = _decoded(messages[:2] + body + messages[-1:])
    assert audio == expected


texts = st.text(max_size=20)
digits = st.from_regex(r"\A[0-9]{1,8}\Z")
seqs = st.one_of(st.just(UNSET), digits)
inbound_messages = st.one_of(
    st.builds(ConnectedMessage, protocol=texts, version=texts),
    st.builds(StartMessage, sequence_number=seqs, stream_sid=texts, start=st.builds(
        StartInfo, stream_sid=texts, account_sid=texts, call_sid=texts, tracks=st.lists(texts, max_size=3),
        custom_parameters=st.dictionaries(texts, texts, max_size=4),
        media_format=st.builds(MediaFormat, encoding=texts, sample_rate=st.integers(-2**63, 2**63 - 1),
                               channels=st.integers(0, 8)))),
    st.builds(MediaMessage, sequence_number=seqs, stream_sid=texts, media=st.builds(
        InboundMedia, chunk=digits, timestamp=digits, payload=st.binary(max_size=400), track=texts)),
    st.builds(DtmfMessage, sequence_number=seqs, stream_sid=texts, dtmf=st.builds(DtmfInfo, digit=texts, track=texts)),
    st.builds(MarkMessage, sequence_number=seqs, stream_sid=texts, mark=st.builds(MarkInfo, name=texts)),
    st.builds(StopMessage, sequence_number=seqs, stream_sid=texts,
              stop=st.builds(StopInfo, account_sid=texts, call_sid=texts)),
)
outbound_messages = st.one_of(
    st.builds(OutboundMedia, stream_sid=texts, media=st.builds(OutboundPayload, payload=st.binary(max_size=400))),
    st.builds(OutboundMark, stream_sid=texts, mark=st.builds(MarkInfo, name=texts)),
    st.builds(OutboundClear, stream_sid=texts),
)


@given(inbound_messages)
def test_encode_decode_identity_inbound(message: object) -> None:
    assert decode_inbound(encode(message)) == message  # type: ignore[arg-type]


@given(outbound_messages)
def test_encode_decode_identity_outbound(message: object) -> None:
    assert decode_outbound(encode(message)) == message  # type: ignore[arg-type]
