"""The emulator's WebSocket fast path (wsfast.FrameSplitter) gives what wsproto alone gives, for any chunking."""

from __future__ import annotations

import random

import numpy as np
import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Message, Ping, TextMessage

from engine.rtzr.emulator.wsfast import Audio, FrameSplitter


def client_stream(rng: random.Random) -> bytes:
    """A client's byte stream: audio, text, pings, fragmented messages, sizes around the 126/65536 length forms."""
    client = Connection(ConnectionType.CLIENT)
    out = b""
    for _ in range(60):
        kind = rng.choice(["bytes", "bytes", "text", "ping", "fragments"])
        size = rng.choice([0, 1, 125, 126, 127, 1600, 3200, 65535, 65536, 70000, (1 << 20) + 5])
        if kind == "bytes":
            out += client.send(BytesMessage(data=rng.randbytes(size)))
        elif kind == "text":
            out += client.send(TextMessage(data="한국어 finalize " * (size // 20)))
        elif kind == "ping":
            out += client.send(Ping(payload=rng.randbytes(min(size, 125))))
        else:
            out += client.send(BytesMessage(data=rng.randbytes(size), message_finished=False))
            out += client.send(Ping(payload=b"mid"))
            out += client.send(BytesMessage(data=rng.randbytes(17), message_finished=True))
    return out + client.send(CloseConnection(code=1000))


def summary(events: list[Event | Audio]) -> list[tuple[str, bytes]]:
    """Messages joined across fragments, plus control events, in order (the fast path's audio: a whole message)."""
    out: list[tuple[str, bytes]] = []
    partial = b""
    for e in events:
        if isinstance(e, np.ndarray):
            assert not partial and not e.flags.writeable
            out.append(("BytesMessage", bytes(e)))
        elif isinstance(e, Message):
            partial += e.data if isinstance(e.data, bytes) else e.data.encode()
            if e.message_finished:
                out.append((type(e).__name__, partial))
                partial = b""
        elif isinstance(e, Ping):
            out.append(("Ping", bytes(e.payload)))
        elif isinstance(e, CloseConnection):
            out.append(("Close", str(e.code).encode()))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_any_chunking_gives_what_wsproto_gives(seed: int) -> None:
    rng = random.Random(seed)
    stream = client_stream(rng)
    plain = Connection(ConnectionType.SERVER)
    plain.receive_data(stream)
    expected = summary(list(plain.events()))
    splitter = FrameSplitter(Connection(ConnectionType.SERVER))
    got: list[Event | Audio] = []
    pos = 0
    while pos < len(stream):
        step = rng.choice([1, 2, 7, 100, 1606, 70000, 300000])
        got += splitter.feed(stream[pos:pos + step])
        pos += step
    assert summary(got) == expected
    assert splitter.rest() == b""


def test_audio_frames_take_the_fast_path_and_control_frames_reach_wsproto() -> None:
    client = Connection(ConnectionType.CLIENT)
    ws = Connection(ConnectionType.SERVER)
    splitter = FrameSplitter(ws)
    events = splitter.feed(client.send(BytesMessage(data=b"\x01" * 3200)) + client.send(Ping(payload=b"p")))
    assert isinstance(events[0], np.ndarray) and bytes(events[0]) == b"\x01" * 3200
    assert isinstance(events[1], Ping)
    assert ws.send(events[1].response())  # wsproto saw the ping: it can answer it


def test_invalid_utf8_text_is_left_to_wsproto() -> None:
    frame = bytes([0x81, 0x80 | 2, 0, 0, 0, 0, 0xFF, 0xFE])  # zero mask key, invalid UTF-8
    events = FrameSplitter(Connection(ConnectionType.SERVER)).feed(frame)
    assert len(events) == 1 and isinstance(events[0], CloseConnection) and events[0].code == 1007
