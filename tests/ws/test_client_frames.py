"""UnmaskedFrameDecoder (the RTZR client's results and pongs) in front of wsproto gives what wsproto alone gives,
whatever the frames and however the bytes are cut; and the client keeps it past pongs."""

from __future__ import annotations

import itertools

import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage

from engine.ws.client_frames import UnmaskedFrameDecoder
from engine.ws.frames import MessageAssembler, MessageTooBig, encode_frame

MAX = 4096


def frame(first: int, payload: bytes, *, masked: bool = False, long16: bool = False) -> bytes:
    """A frame with the first byte as given (FIN, RSV, opcode), optionally masked or with a non-minimal length."""
    n = len(payload)
    if long16:
        head = bytes((first, (0x80 if masked else 0) | 126)) + n.to_bytes(2, "big")
    else:
        head = encode_frame(first & 0x0F, payload, b"\x01\x02\x03\x04" if masked else None)[:2]
        if n >= 126:
            head = encode_frame(first & 0x0F, payload, None)[:4 if n < 1 << 16 else 10]
            head = bytes((first, head[1] | (0x80 if masked else 0))) + head[2:]
        else:
            head = bytes((first, head[1]))
    if masked:
        return head + b"\x01\x02\x03\x04" + encode_frame(first & 0x0F, payload, b"\x01\x02\x03\x04")[len(head) + 4:]
    return head + payload


FRAMES = st.one_of(
    st.text(max_size=300).map(lambda t: frame(0x81, t.encode())),
    st.binary(max_size=300).map(lambda b: frame(0x82, b)),
    st.binary(max_size=125).map(lambda b: frame(0x8A, b)),  # pong
    st.binary(max_size=20).map(lambda b: frame(0x89, b)),  # ping: wsproto's
    st.binary(min_size=1, max_size=50).map(lambda b: frame(0x01, b"x" * len(b)) + frame(0x80, b"y")),  # fragments
    st.binary(max_size=50).map(lambda b: frame(0x82, b, masked=True)),  # a server must not mask
    st.binary(max_size=50).map(lambda b: frame(0x82, b, long16=True)),  # non-minimal length
    st.just(frame(0xC1, b"rsv")),  # reserved bit
    st.just(frame(0x81, b"\xff\xfe")),  # bad UTF-8
    st.just(frame(0x82, b"z" * (MAX + 1))),  # over the limit
    st.just(frame(0x82, b"w" * 70000)),  # 64-bit length (over the limit here too)
)


def wsproto_only(data: bytes, cuts: list[int]) -> list[object]:
    return _drive(None, data, cuts)


def _drive(fast: UnmaskedFrameDecoder | None, data: bytes, cuts: list[int]) -> list[object]:
    """What the client sees: messages, pongs and wsproto's other events, in order, ending at the first error."""
    ws = Connection(ConnectionType.CLIENT)
    assembler = MessageAssembler(MAX)
    out: list[object] = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(bounds):
        chunk = data[a:b]
        if fast is not None:
            messages, pongs, rest = fast.feed(chunk)
            out.extend(messages)
            out.extend(("pong", p) for p in pongs)
            if rest is None:
                continue
            fast, chunk = None, rest
        ws.receive_data(chunk)
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                try:
                    message = assembler.add(event)
                except MessageTooBig:
                    out.append("too big")
                    return out
                if message is not None:
                    out.append(message)
            elif isinstance(event, Pong):
                out.append(("pong", bytes(event.payload)))
            elif isinstance(event, Ping | CloseConnection):
                out.append((type(event).__name__, getattr(event, "code", None)))
                if isinstance(event, CloseConnection):
                    return out
            else:
                out.append(type(event).__name__)
    return out


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(FRAMES, max_size=8), cuts=st.lists(st.integers(0, 1 << 20), max_size=6))
def test_the_decoder_in_front_of_wsproto_sees_what_wsproto_alone_sees(frames: list[bytes], cuts: list[int]) -> None:
    # Pongs and messages are kept in order each, not against each other (a pong only wakes a ping).
    data = b"".join(frames)
    fast = _drive(UnmaskedFrameDecoder(MAX), data, cuts)
    slow = wsproto_only(data, cuts)

    def split(xs: list[object]) -> tuple[list[object], list[object]]:
        pongs = [x for x in xs if isinstance(x, tuple) and x[0] == "pong"]
        return [x for x in xs if x not in pongs], pongs

    assert split(fast) == split(slow)


def test_whole_frames_stay_with_the_decoder_and_a_ping_goes_to_wsproto() -> None:
    dec = UnmaskedFrameDecoder(MAX)
    data = frame(0x81, b'{"seq":0}') + frame(0x8A, b"p1") + frame(0x82, b"\x00" * 300)
    assert dec.feed(data[:5]) == ([], [], None)  # incomplete: buffered
    assert dec.feed(data[5:]) == (['{"seq":0}', b"\x00" * 300], [b"p1"], None)
    ping = frame(0x89, b"hi")
    assert dec.feed(frame(0x81, b"a") + ping) == (["a"], [], ping)


async def test_the_client_keeps_the_fast_decoder_past_results_and_pongs() -> None:
    """The server sends nothing until the client has spoken: a frame sent right behind the 101 may arrive in the
    101's own read, and wsproto then holds it, so the fast decoder rightly does not start (that made this test
    fail one run in three or four when the server sent a result at once)."""
    from tests.rtzr.test_rtzr_wsclient import Peer, connect, server

    async def handler(peer: Peer) -> None:
        await peer.accept()
        event: Event = await peer.next_event()
        assert isinstance(event, Ping)
        await peer.send(event.response(), TextMessage(data='{"a":1}'))
        event = await peer.next_event()
        assert isinstance(event, TextMessage)
        await peer.send(TextMessage(data='{"b":2}'))
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with server(handler) as url:
            conn = await connect(url)
            assert conn._fast is not None
            answered = await conn.send_ping(b"12345678")
            assert await conn.receive_message() == '{"a":1}'
            assert answered.is_set()  # the pong, ahead of the result in one write, was decoded by the fast decoder
            assert conn._fast is not None
            await conn.send_text("go")
            assert await conn.receive_message() == '{"b":2}'
            assert conn._fast is not None
            await conn.aclose(grace=0.1)
