"""Differential: the Twilio WebSocket receive path (our h11 upgrade, the fast text-frame decoder, the
hand-over to wsproto's frame layer) against wsproto alone, on any byte stream cut anywhere.

Bounded (the ``sori`` profile in conftest.py) in ``make test``; ``make fuzz`` runs it long
(``SORI_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Event, Ping, Request, TextMessage

from engine.twilio.wsconn import TextFrameDecoder, UpgradeHandshake

Messages = tuple[list[str | bytes], int | None]


def wsproto_messages(data_chunks: list[bytes], conn: Connection | WSConnection | None = None) -> Messages:
    """Complete messages and the close code (if any) wsproto reports for these server-side bytes."""
    conn = conn or Connection(ConnectionType.SERVER)
    out: list[str | bytes] = []
    parts: list[str | bytes] = []
    for chunk in data_chunks:
        conn.receive_data(chunk)
        for event in conn.events():
            if isinstance(event, CloseConnection):
                return out, event.code
            if isinstance(event, (TextMessage, BytesMessage)):
                parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
                if event.message_finished:
                    joined = "".join(p for p in parts if isinstance(p, str)) if isinstance(event, TextMessage) \
                        else b"".join(p for p in parts if isinstance(p, bytes))
                    out.append(joined)
                    parts = []
    return out, None


def fast_then_wsproto(data_chunks: list[bytes], limit: int) -> Messages:
    """What WsServerConnection._feed does: the fast decoder until a frame it does not take, then wsproto."""
    decoder: TextFrameDecoder | None = TextFrameDecoder(limit)
    out: list[str | bytes] = []
    handed: list[bytes] = []
    for chunk in data_chunks:
        if decoder is None:
            handed.append(chunk)
            continue
        messages, rest = decoder.feed(chunk)
        out += messages
        if rest is not None:
            decoder = None
            handed.append(rest)
    more, code = wsproto_messages(handed)
    return out + more, code


def upgrade_then_frames(data_chunks: list[bytes], limit: int) -> Messages:
    """Our whole receive path: h11 upgrade, 101, then h11's trailing bytes and the rest through the frame path."""
    handshake = UpgradeHandshake()
    chunks = iter(data_chunks)
    for chunk in chunks:
        if handshake.receive_data(chunk) is not None:
            break
    else:
        raise AssertionError("the request head never completed")
    _response, trailing = handshake.accept()
    return fast_then_wsproto([c for c in (trailing, *chunks) if c], limit)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


FRAMES = st.one_of(
    st.text(max_size=300).map(lambda t: [TextMessage(t)]),
    st.text(min_size=126, max_size=2000).map(lambda t: [TextMessage(t)]),
    st.binary(max_size=200).map(lambda b: [BytesMessage(b)]),
    st.binary(max_size=100).map(lambda b: [Ping(b)]),
    st.lists(st.text(max_size=50), min_size=2, max_size=4).map(
        lambda ts: [TextMessage(t, message_finished=i == len(ts) - 1) for i, t in enumerate(ts)]),
)
GARBAGE = st.sampled_from([b"", b"\x81\x05hello", b"\x81\x85\x00\x00\x00\x00\xff\xfe\xfd\xfc\xfb",
                           b"\x81\xfe\x00\x05\x00\x00\x00\x00hello", b"\x91\x80\x00\x00\x00\x00"])


def client_frames(frames: list[list[Event]], garbage: bytes) -> bytes:
    client = Connection(ConnectionType.CLIENT)
    return b"".join(client.send(e) for group in frames for e in group) + garbage + client.send(TextMessage("after"))


@given(frames=st.lists(FRAMES, max_size=12), cuts=st.lists(st.integers(0, 20_000), max_size=8), garbage=GARBAGE)
def test_fast_decoder_agrees_with_wsproto(frames: list[list[Event]], cuts: list[int], garbage: bytes) -> None:
    """Any frame stream, cut anywhere: fast path + wsproto hand-over == wsproto alone (messages, close code)."""
    chunks = cut(client_frames(frames, garbage), cuts)
    assert fast_then_wsproto(chunks, 1 << 20) == wsproto_messages(chunks)


@given(frames=st.lists(FRAMES, max_size=8), cuts=st.lists(st.integers(0, 5_000), max_size=8), garbage=GARBAGE,
       target=st.sampled_from(["/twilio/media", "/twilio/media?x=1", "/"]),
       subprotocols=st.lists(st.sampled_from(["a", "b.example"]), max_size=2))
def test_upgrade_and_frames_agree_with_wsproto(frames: list[list[Event]], cuts: list[int], garbage: bytes,
                                                target: str, subprotocols: list[str]) -> None:
    """Request head and first frames in any TCP cut (frames riding behind the head included): our upgrade +
    trailing-data hand-over delivers what wsproto's own server handshake + connection deliver."""
    client = WSConnection(ConnectionType.CLIENT)
    head = client.send(Request(host="example.com", target=target, subprotocols=subprotocols))
    body = client_frames(frames, garbage)
    reference = WSConnection(ConnectionType.SERVER)
    reference.receive_data(head)
    [request] = reference.events()
    assert isinstance(request, Request)
    reference.send(AcceptConnection())
    expected = wsproto_messages(cut(body, cuts), reference)
    assert upgrade_then_frames(cut(head + body, cuts), 1 << 20) == expected
